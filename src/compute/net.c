#include "compute/net.h"

void ds4_net_init_rope(ds4_net *net) {
    const ds4_hparams *hp = net->hp;
    for (int num = 0; num < 2; num++) {
        ds4_rope_init(&net->rope[num][0], hp->n_rot, hp->rope_base, 1.0f, hp->rope_orig_ctx, hp->yarn_beta_fast,
                      hp->yarn_beta_slow);
        ds4_rope_init(&net->rope[num][1], hp->n_rot, hp->compress_rope_base, hp->rope_factor, hp->rope_orig_ctx,
                      hp->yarn_beta_fast, hp->yarn_beta_slow);
        if (num == 1) {
            ds4_rope_round_bf16(&net->rope[num][0]);
            ds4_rope_round_bf16(&net->rope[num][1]);
        }
    }
}
