"""slate-rl: reinforcement learning for slate recommendation on the GeMS benchmark."""

__version__ = "0.1.0"
