"""The routed nearest-neighbour index, FAISS's IVF idea: ``ClusteredIndex`` (route, scan, add, remove, nprobe),
its Numba kernels for batches, how stored vectors are read (``storage``: float16 converted exactly), KMeans and
nlist (``cluster``), and the pure metrics (precision@k, exact neighbours).

Imports only the package's base modules: no TensorFlow, no images, no bundle.
"""
