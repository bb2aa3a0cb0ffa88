"""Fitting the encoder: the autoencoders and their training loop, the pixel path's random views, early stopping,
TensorBoard's files, and the export for LiteRT, checked against Keras.

Imports the base modules, ``data``, ``model`` and ``bundle`` (its file names and probe images); never engines,
search, the collection or serving.
"""
