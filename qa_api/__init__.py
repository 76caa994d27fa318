"""The HTTP face of the product: question answering with cited sources, over `retrieval`."""
