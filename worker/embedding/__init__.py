"""The embedder (batches texts across model lanes, caches vectors) and the backends it
runs: ONNX Runtime on CPU, sentence-transformers with torch on CUDA."""
