"""Slate decoders (GeMS, TopK, kNN) and the models behind them (GeMS VAE, matrix factorisation).

Modules (import from them directly; this package imports nothing heavy):

* `base`: `SlateDecoder`, the interface RL agents act through (action box + `decode`).
* `checks`: validation of logged (slate, clicks) tensors.
* `layers`: the MLP builder shared by the VAE and its frozen decoder.
* `data`: logged sessions as flat (slate, clicks) samples, validation split, batches, `SlateDataModule`.
* `losses`: GeMS loss terms under the "reference" and "standard" conventions.
* `gems`: the `GeMS` slate VAE (a LightningModule; `data` and `gems` are the only modules that import Lightning).
* `bounds`: `ActionBounds`, `table_bounds`, `gems_action_bounds`.
* `decoders`: `GeMSDecoder`, `TopKDecoder`, `KNNDecoder`, `decoder_from_payload`.
* `mf`: BPR matrix factorisation (`train_mf`) and `popularity_correlation`.
"""
