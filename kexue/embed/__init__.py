"""JoSE spherical text embeddings: parameters (TensorFlow-free), the model and its training, evaluation, word2vec I/O."""
