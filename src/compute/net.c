#include "compute/net.h"

void ds4_net_init_rope(ds4_net *net) {
    const ds4_hparams *hp = net->hp;
    ds4_rope_init(&net->rope_main, hp->n_rot, hp->rope_base, 1.0f, hp->rope_orig_ctx, hp->yarn_beta_fast,
                  hp->yarn_beta_slow);
    ds4_rope_init(&net->rope_comp, hp->n_rot, hp->compress_rope_base, hp->rope_factor, hp->rope_orig_ctx,
                  hp->yarn_beta_fast, hp->yarn_beta_slow);
}
