"""Slate decoders (GeMS, TopK, kNN) and the models behind them (GeMS VAE, matrix factorisation)."""
