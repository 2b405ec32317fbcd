"""Offline RL on collected slate datasets: BC, TD3+BC, IQL and CQL over GRU beliefs, acting through a frozen ranker.

One file per algorithm (`bc`, `td3_bc`, `iql`, `cql`), each a registered method of the `offline` family; what they
share is in `common` (config, batch, agent), `actions` (rankers and action labels), `training` (the loop) and
`evaluation` (normalised score, behaviour). No MLflow here: the `train_offline` stage runs them.
"""
