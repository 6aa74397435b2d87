/* Machine ceilings for ds4-bench --roofline: sustained memory read
 * bandwidth (a STREAM-like sum over a buffer far larger than the caches)
 * and peak fp32 FMA throughput, both with n_threads threads. */
#ifndef DS4_BENCH_ROOFLINE_H
#define DS4_BENCH_ROOFLINE_H

double roofline_read_bandwidth(int n_threads, double *seconds_out); /* bytes/s */
double roofline_peak_flops(int n_threads);                         /* fp32 flop/s */

#endif
