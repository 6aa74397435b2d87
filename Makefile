# ds4 — DeepSeek V4 Flash inference engine.
#   make            build every binary (into the repository root)
#   make test       build and run the whole test suite
#   make san-test   the suite again under AddressSanitizer + UBSan
#   make cuda       CUDA-enabled binaries in build/cuda/bin (needs nvcc; sm_90 + PTX)
#   make cuda-test  the suite with those binaries, GPU tests included (needs a GPU)
#   make clean

CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN    := -Wall -Wextra -Werror
STD     := -std=c11 -D_GNU_SOURCE
PKGS    := libcjson libpcre2-8 liburing libcrypto
CPPFLAGS += -Iinclude -Isrc -Itests $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ledit -lpthread -lm
ARCHFLAGS ?= -march=native

BUILD   ?= build/rel
BINDIR  ?= .

ALL_CFLAGS = $(STD) $(WARN) $(CFLAGS) $(ARCHFLAGS) $(EXTRA_CFLAGS) -MMD -MP

LIB_SRC  := $(shell find src -name '*.c' | sort)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libds4.a

# CUDA (make cuda sets WITH_CUDA=1): the same C sources compiled with
# DS4_WITH_CUDA (which drops the backend stub), plus src/**/*.cu through
# nvcc. The default build never looks for nvcc.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
# Hopper machine code, plus PTX that the driver compiles for other GPUs: it
# takes the newest PTX the GPU can run, so Blackwell gets compute_90 (clusters,
# programmatic launches), Ampere and Ada compute_80 (tensor cores), Turing
# compute_75 (plain kernels). The host side asks which one was loaded
# (k_code_arch) before it picks a path.
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
             -gencode arch=compute_80,code=compute_80 -gencode arch=compute_75,code=compute_75
# --fmad=false: no fused multiply-add, like the ISO C reference (common.cuh).
NVCCFLAGS ?= -O3 -g -lineinfo --fmad=false
CU_SRC    := $(shell find src -name '*.cu' | sort)
ifeq ($(WITH_CUDA),1)
LIB_OBJ   += $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
LDLIBS    += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
EXTRA_CFLAGS += -DDS4_WITH_CUDA
endif

# A tool is tools/NAME.c or a folder tools/NAME/ of sources.
TOOL_FILES := $(wildcard tools/*.c)
TOOL_DIRS  := $(patsubst %/,%,$(filter %/,$(wildcard tools/*/)))
TOOLS      := $(notdir $(TOOL_FILES:.c=)) $(notdir $(TOOL_DIRS))
TOOL_BINS  := $(addprefix $(BINDIR)/,$(TOOLS))

TEST_SRC  := $(shell find tests -name 'test_*.c' | sort)
TEST_BINS := $(TEST_SRC:%.c=$(BUILD)/%)

.PHONY: all test san-test clean deps run cuda cuda-trace cuda-test cuda-test-ptx cuda-sanitize test-bins
all: $(TOOL_BINS)
test-bins: $(TEST_BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(CPPFLAGS) -DDS4_WITH_CUDA -std=c++17 $(NVCCFLAGS) $(CUDA_ARCH) \
	    -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings -MMD -MP -MF $(@:.o=.d) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

.SECONDEXPANSION:
$(TOOL_BINS): $(BINDIR)/%: $$(addprefix $(BUILD)/,$$(addsuffix .o,$$(basename $$(wildcard tools/$$*.c tools/$$*/*.c)))) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) $(filter %.o,$^) $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/harness.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) $< $(BUILD)/tests/harness.o $(LIB) $(LDLIBS) -o $@

test: $(TOOL_BINS) $(TEST_BINS)
	DS4_BIN=$(abspath $(BINDIR)) DS4_BUILD=$(abspath $(BUILD)) ./tests/run.sh $(TEST_BINS)

SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
san-test:
	$(MAKE) test BUILD=build/san BINDIR=build/san/bin CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)"

# CUDA binaries and the suite run with them. CUDA_BUILD and CUDA_BIN may be
# moved; ARCHFLAGS may be lowered for binaries carried to other machines.
CUDA_BUILD ?= build/cuda
CUDA_BIN   ?= $(CUDA_BUILD)/bin
cuda:
	$(MAKE) all test-bins WITH_CUDA=1 BUILD=$(CUDA_BUILD) BINDIR=$(CUDA_BIN)
# Diagnostic CUDA tools in build/cuda-trace/bin: every kernel's first block
# records when it starts and when its programmatic wait returns
# (DS4_TRACE_OUT=file; bench/cuda-trace.py reads it). Not for timings.
cuda-trace:
	$(MAKE) all WITH_CUDA=1 BUILD=build/cuda-trace BINDIR=build/cuda-trace/bin NVCCFLAGS="$(NVCCFLAGS) -DDS4_CUDA_TRACE"
cuda-test: cuda
	./scripts/check-cuda-ptx.sh $(NVCC)
	DS4_BIN=$(abspath $(CUDA_BIN)) DS4_BUILD=$(abspath $(CUDA_BUILD)) DS4_REQUIRE_GPU=1 ./tests/run.sh \
	    $(shell find tests -name 'test_*.c' | sort | sed 's|^|$(CUDA_BUILD)/|; s|\.c$$||')
# The kernel paths of GPUs other than Hopper, on a Hopper card: the kernel
# tests with the shared memory an A100 (163 KB) or an RTX card (99 KB) gives
# a block, then the GPU tests with device code built from PTX alone for
# compute_80 and compute_75, as GPUs without machine code of their own run
# it (Ampere, Ada; Turing).
cuda-test-ptx: cuda
	for l in 166912 101376; do DS4_CUDA_SMEM_LIMIT=$$l DS4_REQUIRE_GPU=1 $(CUDA_BUILD)/tests/cuda/test_cuda_kernels || exit 1; done
	for a in 80 75; do \
	    $(MAKE) cuda CUDA_BUILD=build/cuda-ptx$$a CUDA_ARCH="-gencode arch=compute_$$a,code=compute_$$a" && \
	    DS4_BIN=$(abspath build)/cuda-ptx$$a/bin DS4_BUILD=$(abspath build)/cuda-ptx$$a DS4_REQUIRE_GPU=1 DS4_EXPECT_CODE_ARCH=$${a}0 \
	        ./tests/run.sh build/cuda-ptx$$a/tests/cuda/test_cuda_kernels build/cuda-ptx$$a/tests/cuda/test_cuda_quant || exit 1; \
	done

# compute-sanitizer (memcheck, initcheck, racecheck) over the CUDA backend.
cuda-sanitize: cuda
	DS4_BIN=$(abspath $(CUDA_BIN)) DS4_KERNEL_TESTS=$(abspath $(CUDA_BUILD))/tests/cuda/test_cuda_kernels \
	    DS4_TEST_DATA=$(abspath tests/data) sh tests/cuda/sanitize.sh

# The main job: build, make the default model if needed, and run it.
run: all
	./scripts/run-default.sh

deps:
	./scripts/install-deps.sh

clean:
	rm -rf build $(TOOL_BINS)

# Tool objects too: a changed header must rebuild every binary using it.
TOOL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/*.c tools/*/*.c))
-include $(LIB_OBJ:.o=.d) $(TEST_BINS:=.d) $(TOOL_OBJ:.o=.d)
