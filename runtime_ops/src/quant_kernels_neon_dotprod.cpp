// quant_kernels_neon.cpp built for CPUs with the dotprod extension (armv8.2-a+dotprod, sdot).
#define GLASS_NEON_DOTPROD
#include "quant_kernels_neon.cpp"
