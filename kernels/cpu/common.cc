// The library's C entry points for Python (ctypes): the CPU check and the test/tuning switches.
#include "common.h"

extern "C" {
// 1: the AVX-512 paths run on this CPU (tests and benchmarks report it).
int workbench_cpu_has_avx512() { return workbench_cpu::HasAvx512() ? 1 : 0; }
// Force (1) or release (0) the portable paths, so tests check both on an AVX-512 machine.
void workbench_cpu_force_portable(int on) { workbench_cpu::force_portable.store(on); }
// Products of at least `work` multiply-adds are split over the pool (0: all of them; tests, tuning).
void workbench_cpu_set_min_parallel_work(int64_t work) { workbench_cpu::min_parallel_work.store(work); }
}
