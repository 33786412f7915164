"""Native lmKAN kernels (C++/OpenMP for CPU, CUDA for GPU, an onnxruntime custom-op library) and their build."""
