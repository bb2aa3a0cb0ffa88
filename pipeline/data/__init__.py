"""Images in: finding every image file under a folder (its first-level folder the label), reading and decoding
any real-world image to RGB within bounds, the one preprocessing of fit and query, fetching a URL safely, and the
decode cache with its training batches.

Imports only the package's base modules (errors, config); nothing of the model, the index or the bundle.
"""
