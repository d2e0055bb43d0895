#ifndef CZSTD_SHIM_H
#define CZSTD_SHIM_H
// The advanced (still "static linking only") parameters such as ZSTD_c_nbWorkers are
// part of the stable API since 1.4; ZSTD_STATIC_LINKING_ONLY is not needed for them.
#include <zstd.h>
#include <zstd_errors.h>
#endif
