// Splitting an op's loop over the step's thread pool. Tasks must write disjoint outputs; integer results then do
// not depend on the number of threads.
#pragma once

#include "qtrain/kernels/thread_pool.h"

namespace qtrain {

// The pieces live with the pool (qtrain/kernels/thread_pool.h) so quant/ splits its passes the same way.
using kernels::for_tiles;
using kernels::kNsPerByte;

}  // namespace qtrain
