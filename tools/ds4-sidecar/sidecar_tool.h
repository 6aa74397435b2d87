/* ds4-sidecar subcommands. Each returns the process exit status and
 * prints its own errors ("ds4-sidecar: ..."). */
#ifndef DS4_TOOLS_SIDECAR_TOOL_H
#define DS4_TOOLS_SIDECAR_TOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/gguf.h"
#include "formats/sidecar.h"
#include "model/hparams.h"
#include "model/weights.h"

int cmd_export(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_probe(int argc, char **argv);

/* A package opened for inspection: its dense GGUF, the geometry from it,
 * and the validated manifest; with gguf_ok, a GGUF path too: the GGUF
 * itself, described as a package of its experts (ds4_sidecar_from_gguf;
 * the paths stay NULL). */
typedef struct package {
    char *manifest_path, *dense_path;
    gguf_file *dense;
    ds4_hparams hp;
    ds4_sidecar *sc;
} package;

int package_open(const char *dir, bool gguf_ok, package *p, ds4_error *err);
void package_close(package *p);

/* Binds a full model's weights for reading, whatever its matrix types
 * (exporting and verifying only copy bytes, they never multiply). */
int bind_for_copy(ds4_weights *w, const ds4_hparams *hp, const gguf_file *f, unsigned flags, ds4_error *err);

#endif
