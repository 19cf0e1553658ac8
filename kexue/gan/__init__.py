"""The GAN branch: image data, Cascading Rejection, training, evaluation.

Importing this package (or ``kexue.gan.params`` / ``kexue.gan.data``) never imports
TensorFlow: config checking and cache keys need only those.
"""
