/* The engine's model object, shared by the API implementation's parts
 * (engine.c: loading and sessions; summary.c: the printed description). */
#ifndef DS4_ENGINE_MODEL_H
#define DS4_ENGINE_MODEL_H

#include <pthread.h>
#include <stdbool.h>

#include "compute/net.h"
#include "compute/threadpool.h"
#include "ds4.h"
#include "formats/gguf.h"
#include "model/hparams.h"
#include "model/weights.h"

struct ds4_model {
    gguf_file *file;
    ds4_hparams hp;
    ds4_weights w;
    ds4_net net;
    ds4_pool *pool;
    ds4_tokenizer *tok; /* NULL when the file carries none */
    int bos_id, eos_id;
    ds4_backend backend;        /* CPU or CUDA: what AUTO sessions use */
    struct ds4_gpu_model *gpu;  /* device copies of the weights; NULL unless loaded for CUDA */
    struct ds4_sidecar *sidecar; /* sidecar mode: the package the experts come from */
    bool resident;
    uint32_t slots;
    /* A sidecar expert source has state (slots, reads in flight, views that
     * live until the next acquire): sessions sharing the model take turns. */
    pthread_mutex_t eval_lock;
    bool eval_lock_init;
};

#endif
