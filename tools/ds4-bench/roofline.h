/* Machine ceilings for ds4-bench --roofline: sustained memory read
 * bandwidth (a STREAM-like sum over a buffer far larger than the caches)
 * and peak fp32 FMA and int8 dot-product throughput, with n_threads
 * threads. */
#ifndef DS4_BENCH_ROOFLINE_H
#define DS4_BENCH_ROOFLINE_H

double roofline_read_bandwidth(int n_threads, double *seconds_out); /* bytes/s */
double roofline_peak_flops(int n_threads);                         /* fp32 flop/s */
/* int8 dot-product rate (AVX-512 VNNI dpbusd, 2 ops per multiply-add),
 * the ceiling of the quantized kernels; 0 where not measured. */
double roofline_peak_int8(int n_threads);                          /* op/s */

#endif
