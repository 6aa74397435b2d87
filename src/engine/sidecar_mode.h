/* Sidecar mode of the engine: turns an opened package into the model's
 * expert source. Decides resident vs slot bank, sizes the bank
 * (moe_slot_bank, ssd_cache_bytes or the MemAvailable-based auto budget),
 * picks O_DIRECT or buffered reads, and prints ds4-ssd's startup lines. */
#ifndef DS4_ENGINE_SIDECAR_MODE_H
#define DS4_ENGINE_SIDECAR_MODE_H

#include "ds4.h"
#include "experts/experts.h"
#include "formats/sidecar.h"
#include "model/hparams.h"

/* On success *out is the source and *slots its slots per layer. for_gpu:
 * the model will run on a GPU, which holds the dense weights and the
 * context (the automatic bank then takes more of the host's memory). */
int ds4_sidecar_mode_open(const ds4_sidecar *sc, const ds4_hparams *hp, uint64_t dense_bytes, bool for_gpu,
                          const ds4_model_opts *o, ds4_expert_source **out, uint32_t *slots, ds4_error *err);

/* Whether routed experts of `routed` bytes can be held in host memory
 * (pinned for a GPU's slot bank) with `avail` bytes available, leaving room
 * for the rest of the process and the system. */
bool ds4_experts_fit_host(uint64_t routed, uint64_t avail);

#endif
