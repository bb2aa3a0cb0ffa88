"""The encoder: the pretrained backbone and its weights, the Keras layers that LiteRT runs natively (pooling,
area resizing, histograms), the descriptor's blocks and head, running a fitted encoder (LiteRT or Keras, one
``Encoder`` interface) and turning images into vectors (``embed``).

Imports the base modules and ``data``; never the bundle, training or anything that uses a fit.
"""
