#!/usr/bin/env python3
"""An independent sidecar packer, written from the package description in
spec/SIDECAR_AND_DSPARK.md section 1 (not from ds4-sidecar), so the engine's
reader is checked against a second implementation of the format.

usage: sidecar_pack.py MODEL.gguf OUTDIR [--layout expert-major|family-major]
                       [--align N] [--pad N] [--subdir] [--no-stride]

  --layout expert-major  layer_LLL.bin = for each expert: gate|up|down,
                         repacked_offset = offset inside the record (default)
  --layout family-major  legacy "layer-major whole tensor" files: the three
                         family runs one after another, repacked_offset =
                         start of the run, no expert_major field (detected
                         from exact_byte_length > bytes_per_expert)
  --align N              pad each expert record to a multiple of N bytes
                         (default 1: records packed back to back)
  --pad N                then N more bytes of padding per record
  --subdir               llama.cpp-fork style: OUTDIR/model-dense.gguf and
                         OUTDIR/sidecar/{manifest.json,layer_*.bin}
  --no-stride            leave expert_stride out (readers derive it)

The dense GGUF keeps every metadata entry byte for byte and every tensor
except blk.N.ffn_{gate,up,down}_exps.weight."""
import json
import os
import struct
import sys

# value type -> fixed size (GGUF v3); 8 = string, 9 = array
SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# ggml type -> (name, values per block, bytes per block)
GGML = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 8: ("Q8_0", 32, 34), 10: ("Q2_K", 256, 84),
        12: ("Q4_K", 256, 144), 16: ("IQ2_XXS", 256, 66), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
        26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 30: ("BF16", 1, 2), 39: ("MXFP4", 32, 17)}
FAMILIES = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]


class Reader:
    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, n):
        b = self.d[self.p:self.p + n]
        if len(b) != n:
            raise ValueError("GGUF truncated")
        self.p += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64()).decode("utf-8")

    def skip_value(self, vt):
        if vt in SCALAR:
            self.take(SCALAR[vt])
        elif vt == 8:
            self.take(self.u64())
        elif vt == 9:
            et, n = self.u32(), self.u64()
            for _ in range(n):
                self.skip_value(et)
        else:
            raise ValueError("bad value type %d" % vt)


def read_gguf(path):
    data = open(path, "rb").read()
    r = Reader(data)
    if r.take(4) != b"GGUF" or r.u32() != 3:
        raise SystemExit("%s: not a GGUF v3 file" % path)
    n_tensors, n_kv = r.u64(), r.u64()
    kv_start = r.p
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        vt = r.u32()
        at = r.p
        r.skip_value(vt)
        if vt == 4:
            meta[key] = struct.unpack("<I", data[at:at + 4])[0]
        elif vt == 8:
            meta[key] = data[at + 8:r.p].decode()
    kv_bytes = data[kv_start:r.p]
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        nd = r.u32()
        ne = [r.u64() for _ in range(nd)]
        ty, off = r.u32(), r.u64()
        tensors.append({"name": name, "ne": ne, "type": ty, "offset": off})
    align = meta.get("general.alignment", 32)
    base = (r.p + align - 1) // align * align
    for t in tensors:
        name, per, size = GGML[t["type"]]
        n = 1
        for x in t["ne"]:
            n *= x
        t["nbytes"] = (n + per - 1) // per * size
        t["row_bytes"] = (t["ne"][0] + per - 1) // per * size
        t["data"] = data[base + t["offset"]: base + t["offset"] + t["nbytes"]]
        if len(t["data"]) != t["nbytes"]:
            raise SystemExit("%s: tensor %s runs past the end" % (path, name))
    return n_kv, kv_bytes, tensors, align, meta


def write_dense(path, n_kv, kv_bytes, tensors, align):
    keep = [t for t in tensors if not any(".%s." % f in t["name"] for f in FAMILIES)]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(keep), n_kv) + kv_bytes)
    off = 0
    for t in keep:
        nm = t["name"].encode()
        out += struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(t["ne"]))
        out += b"".join(struct.pack("<Q", x) for x in t["ne"]) + struct.pack("<IQ", t["type"], off)
        t["new_offset"] = off
        off = (off + t["nbytes"] + align - 1) // align * align
    out += b"\0" * ((align - len(out) % align) % align)
    base = len(out)
    out += b"\0" * off
    for t in keep:
        out[base + t["new_offset"]: base + t["new_offset"] + t["nbytes"]] = t["data"]
    open(path, "wb").write(out)


def main():
    args = sys.argv[1:]
    layout, align, pad, subdir, stride_field = "expert-major", 1, 0, False, True
    pos = []
    i = 0
    while i < len(args):
        if args[i] == "--layout":
            layout = args[i + 1]
            i += 2
        elif args[i] == "--align":
            align = int(args[i + 1])
            i += 2
        elif args[i] == "--pad":
            pad = int(args[i + 1])
            i += 2
        elif args[i] == "--subdir":
            subdir, i = True, i + 1
        elif args[i] == "--no-stride":
            stride_field, i = False, i + 1
        else:
            pos.append(args[i])
            i += 1
    src, out = pos
    n_kv, kv_bytes, tensors, gguf_align, meta = read_gguf(src)
    by_name = {t["name"]: t for t in tensors}
    n_layer = meta["deepseek4.block_count"]
    n_expert = meta["deepseek4.expert_count"]
    side = os.path.join(out, "sidecar") if subdir else out
    os.makedirs(side)
    dense_dir = out if subdir else os.path.join(out, "dense")
    os.makedirs(dense_dir, exist_ok=True)
    write_dense(os.path.join(dense_dir, "model-dense.gguf"), n_kv, kv_bytes, tensors, gguf_align)
    entries = []
    for layer in range(n_layer):
        fams = [by_name["blk.%d.%s.weight" % (layer, f)] for f in FAMILIES]
        bpe = [t["ne"][1] * t["row_bytes"] for t in fams]
        fname = "layer_%03d.bin" % layer
        with open(os.path.join(side, fname), "wb") as fp:
            if layout == "expert-major":
                record = sum(bpe)
                stride = (record + align - 1) // align * align + pad
                offsets = [0, bpe[0], bpe[0] + bpe[1]]
                for e in range(n_expert):
                    for t, b in zip(fams, bpe):
                        fp.write(t["data"][e * b:(e + 1) * b])
                    fp.write(b"\0" * (stride - record))
            else:
                offsets, at = [], 0
                for t in fams:
                    offsets.append(at)
                    fp.write(t["data"])
                    at += len(t["data"])
        for f, t, b, o in zip(FAMILIES, fams, bpe, offsets):
            e = {"layer": layer, "tensor_family": f, "quant_type": GGML[t["type"]][0], "shape": t["ne"],
                 "repacked_file": fname, "repacked_offset": o, "bytes_per_expert": b,
                 "exact_byte_length": b * n_expert, "tensor_name": t["name"],
                 "source_offset": None, "quant_tier": None}  # provenance placeholders, ignorable
            if layout == "expert-major":
                e["expert_major"] = True
                if stride_field:
                    e["expert_stride"] = stride
            entries.append(e)
    manifest = {"schema_version": 1, "sidecar_kind": "flashmoe_gguf",
                "layout": "layer_major_expert" if layout == "expert-major" else "layer_major_whole_tensor",
                "generated_at": "1970-01-01T00:00:00Z", "include_shared": False,
                "filters": {"layers": None, "families": None}, "source": {"model_files": [src]},
                "model": {"arch": meta.get("general.architecture"), "expert_count": n_expert,
                          "expert_used_count": meta.get("deepseek4.expert_used_count"),
                          "leading_dense_block_count": None, "sidecar_layout": layout},
                "entries": entries, "an_unknown_field": {"readers": "ignore me"}}
    json.dump(manifest, open(os.path.join(side, "manifest.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
