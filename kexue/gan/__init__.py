"""The GAN branch: image data, Cascading Rejection, training, evaluation.

Modules: ``params`` (stage parameters, pydantic), ``data`` (image sources), ``cascading``
(the Cascading Rejection layer), ``models`` (generator and discriminator), ``cascade_gan``
(the GAN as a ``keras.Model`` with its own ``train_step``), ``checkpoint``, ``train`` (the
resumable run), and ``eval`` (``features``, ``metrics``, ``compare``, ``plots``).

Importing this package (or ``kexue.gan.params`` / ``kexue.gan.data``) never imports
TensorFlow: config checking and cache keys need only those.
"""
