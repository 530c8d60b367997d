// Host/device qualifiers for the torch-free math shared by the CPU and CUDA
// kernels. Like c10's C10_HOST_DEVICE, but without pulling in c10, so these
// headers compile in plain C++ unit tests.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SLSAM_HD __host__ __device__
#else
#define SLSAM_HD
#endif
