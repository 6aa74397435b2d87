/* ds4-sidecar: make, check and inspect sidecar packages (routed experts
 * in per-layer files beside a dense GGUF, spec/SIDECAR_AND_DSPARK.md §1).
 *
 *   ds4-sidecar export MODEL.gguf OUTDIR
 *   ds4-sidecar verify DIR [MODEL.gguf]
 *   ds4-sidecar info DIR|MODEL.gguf
 *   ds4-sidecar probe DIR|MODEL.gguf [--seconds S] [--qd N,...] [--buffered]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "sidecar_tool.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-sidecar COMMAND ...\n"
            "  export MODEL.gguf OUTDIR   write a package: OUTDIR/layer_NNN.bin (expert-major records),\n"
            "                             OUTDIR/dense/model-dense.gguf, OUTDIR/manifest.json (with SHA-256\n"
            "                             of every file). Built in OUTDIR.tmp.PID and renamed when complete.\n"
            "  verify DIR [MODEL.gguf]    check the manifest, file sizes and checksums; with MODEL.gguf also\n"
            "                             that every expert and dense tensor equals the source byte for byte\n"
            "  info DIR|MODEL.gguf        summary of a package, or of a GGUF's experts as they stream from it\n"
            "  probe DIR|MODEL.gguf [--seconds S] [--qd N[,N...]] [--buffered] [--burst] [--experts N]\n"
            "                             random expert reads of the layer files, or of a GGUF whose experts\n"
            "                             stream from it (a gate run each, as ds4 --ssd-streaming reads it) (O_DIRECT unless\n"
            "                             --buffered): the disk's MB/s at each queue depth, kept full or\n"
            "                             (--burst) N reads at a time, each burst awaited like a decode step;\n"
            "                             --experts N: only experts 0..N-1 of each layer (a small working set)\n");
}

int bind_for_copy(ds4_weights *w, const ds4_hparams *hp, const gguf_file *f, unsigned flags, ds4_error *err) {
    return ds4_weights_bind_ex(w, hp, f, ~0ull, flags, err);
}

int package_open(const char *dir, bool gguf_ok, package *p, ds4_error *err) {
    memset(p, 0, sizeof *p);
    int r = ds4_sidecar_locate(dir, &p->manifest_path, &p->dense_path, err);
    if (r == 0 && !gguf_ok) return ds4_fail(err, "%s: not a directory", dir);
    if (r < 0) return -1;
    if (!(p->dense = gguf_open(r ? p->dense_path : dir, err))) return -1;
    if (ds4_hparams_load(&p->hp, p->dense, err)) return -1;
    ds4_sidecar_geom g = {p->hp.n_layer, p->hp.n_expert, p->hp.n_embd, p->hp.n_ff_exp};
    p->sc = r ? ds4_sidecar_open(p->manifest_path, &g, err) : ds4_sidecar_from_gguf(p->dense, &g, err);
    return p->sc ? 0 : -1;
}

void package_close(package *p) {
    ds4_sidecar_free(p->sc);
    gguf_close(p->dense);
    free(p->manifest_path);
    free(p->dense_path);
    memset(p, 0, sizeof *p);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(cmd, "verify")) return cmd_verify(argc - 2, argv + 2);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "probe")) return cmd_probe(argc - 2, argv + 2);
    fprintf(stderr, "ds4-sidecar: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
