# ioupos — make (build), make test, make test-asan, make bench, make demo, make clean
# The CPU path is the reference: no -ffast-math anywhere.

# Parallel by default: unless the user gave -j, as many jobs as there are cores (make -j1 for
# one at a time). `make test` also runs one test per core (IOUPOS_TEST_JOBS, tests/run.sh),
# each test's output printed whole when it ends.
# (A command-line -j wins over this; a -j in the MAKEFLAGS environment variable is looked for;
# sub-makes share the top make's job slots.)
NPROC := $(shell nproc 2>/dev/null || echo 2)
ifeq ($(MAKELEVEL),0)
ifeq ($(filter -j%,$(MAKEFLAGS) $(shell printenv MAKEFLAGS)),)
MAKEFLAGS += -j$(NPROC)
endif
endif

CC       ?= cc
CXX      ?= c++
STB_DIR  ?= /usr/include/stb
BUILD    ?= build
# -Wundef: an identifier in #if that is no macro (an enum constant, a typo) is an error, not 0
WARN     := -Wall -Wextra -Werror -Wundef
# IOUPOS_REFERENCE_API: the implementation object exports, and the C tests see, the plain
# references of the layers (ioupos.h section 11) that the tests compare the GEMM forms with.
CPPFLAGS := -D_POSIX_C_SOURCE=200809L -DIOUPOS_REFERENCE_API -I. -I$(STB_DIR)
CFLAGS   ?= -O2 -g
LDLIBS   := -lm -lpthread
SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

DRIVERS  := $(BUILD)/ioupos-crops $(BUILD)/ioupos-prep $(BUILD)/ioupos-phantom $(BUILD)/ioupos-embed \
            $(BUILD)/ioupos-simsiam $(BUILD)/ioupos-dino $(BUILD)/ioupos-finetune $(BUILD)/ioupos-sweep-plot
TESTS    := $(BUILD)/test_sampler $(BUILD)/test_local_crop $(BUILD)/test_image $(BUILD)/test_nifti $(BUILD)/test_augment \
            $(BUILD)/test_phantom $(BUILD)/test_data $(BUILD)/test_gemm $(BUILD)/test_gemm_portable \
            $(BUILD)/test_layers $(BUILD)/test_layers_portable $(BUILD)/test_attention $(BUILD)/test_attention_portable \
            $(BUILD)/test_safetensors $(BUILD)/test_losses $(BUILD)/test_optim $(BUILD)/test_model $(BUILD)/test_decoder \
            $(BUILD)/test_segeval $(BUILD)/test_threads
TESTS    += $(BUILD)/test_finite
# the pre-flight check of data sets (ioupos_dataset_check)
TESTS    += $(BUILD)/test_preflight
# volume data sets and the loader in 3D
TESTS    += $(BUILD)/test_volume_loader
# 3D evaluation: sliding-window inference and the per-organ DSC on volumes, against MONAI
TESTS    += $(BUILD)/test_eval3d
# the memory of a step, estimated from the configuration, against what the backend allocates
TESTS    += $(BUILD)/test_memory
TESTS    += $(BUILD)/test_cuda_ops $(BUILD)/test_cuda_ops_gpublocks
# the communication between processes (section 16b), one process; MPI: tests/test_comm.sh
TESTS    += $(BUILD)/test_comm
BENCHES  := $(BUILD)/bench_sampler $(BUILD)/bench_loader $(BUILD)/bench_prep $(BUILD)/bench_gemm \
            $(BUILD)/bench_encoder $(BUILD)/bench_simsiam $(BUILD)/bench_finetune

# The GEMM's AVX2+FMA kernel when this CPU has it (the portable kernel is tested too), its
# AVX-512 kernel (same results, bit for bit) when the CPU also has AVX-512F, and OpenMP threads.
# The library stays correct without any of them.
SIMD     := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && echo -mavx2 -mfma \
              $$(grep -qw avx512f /proc/cpuinfo && echo -mavx512f))
OPENMP   := -fopenmp
BLAS     := $(if $(wildcard /usr/include/x86_64-linux-gnu/cblas.h /usr/include/cblas.h),-DIOUPOS_BENCH_OPENBLAS,)

.PHONY: all test test-asan test-asan-all test-tsan test-cuda bench bench-cuda bench-parallel demo clean stb fuzz fuzz-replay fixtures check-monai

# ---- the CUDA backend (ioupos_cuda.cu) ---------------------------------------------------------
# `make` builds $(BUILD)/ioupos_cuda.o with nvcc when nvcc is found (CUDA=0 forces CPU only),
# links it into the commands whose model runs on a backend (ioupos-embed, -simsiam, -dino,
# -finetune: their --device flag) and says which it did in one line. Another program that wants
# the CUDA backend links $(BUILD)/ioupos_cuda.o with $(CUDA_LIBS) and calls ioupos_backend_cuda().
# sm_80 (A100) and sm_90 (H100/H200) code plus sm_90 PTX for newer GPUs; --fmad=false keeps the
# element-wise kernels' rounding equal to the CPU reference's; CUDA warnings are errors; the
# ptxas report (registers, spills, stack per kernel) is kept in $(BUILD)/ioupos_cuda.ptxas.txt.
# cuBLAS is not linked: the backend opens libcublas.so.<major> when it starts a device (dlopen,
# found through the rpath below), so that a command's start does not load it
# (tests/test_cublas_load.c).
NVCC      ?= $(shell command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
CUDA      ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(NVCC)))
CUDA_ARCH := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
NVCCFLAGS ?= -O3 -lineinfo
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -ldl
ifeq ($(CUDA),1)
CUDA_OBJ  := $(BUILD)/ioupos_cuda.o
CUDA_MSG  := CUDA backend: built $(CUDA_OBJ) with $(NVCC) (sm_80, sm_90 + PTX) and linked into the --device commands
DEV_FLAGS := -DIOUPOS_WITH_CUDA
DEV_LINK  := $(CUDA_OBJ) $(CUDA_LIBS) -lstdc++
# the nvcc build opens cuBLAS when the backend starts, not when a command starts
TESTS     += $(BUILD)/test_cublas_load
else
CUDA_OBJ  :=
CUDA_MSG  := CUDA backend: not built ($(if $(NVCC),CUDA=0,nvcc not found)): CPU backend only
endif

# ---- MPI (section 16b's MPI table) -------------------------------------------------------------
# When mpicc is found (MPI=0 forces it off, MPI=1 on), $(BUILD)/ioupos_mpi.o is the
# implementation compiled with mpicc -DIOUPOS_WITH_MPI, and `make test` builds
# $(BUILD)/test_comm_mpi from tests/test_comm.c with it, which tests/test_comm.sh runs under
# mpirun -np 2 (and 3), and $(BUILD)/test_comm_nccl (the NCCL table in the CUDA host build; see
# NCCL below), which tests/test_comm_nccl.sh runs likewise. The training commands
# (ioupos-simsiam, -dino, -finetune) are then built with it too: under mpirun they train data
# parallel (tests/test_parallel.sh); started alone they never touch MPI. `make` says which it
# did in one line. A program that wants the MPI table compiles with $(MPICC) -DIOUPOS_WITH_MPI
# and links $(BUILD)/ioupos_mpi.o.
MPICC     ?= $(shell command -v mpicc 2>/dev/null)
MPI       ?= $(if $(MPICC),1,0)
ifeq ($(MPI),1)
MPICC     := $(or $(MPICC),mpicc)
MPI_HOST_CMDS := $(BUILD)/hostcuda/ioupos-simsiam-mpi $(BUILD)/hostcuda/ioupos-dino-mpi
MPI_TESTS := $(BUILD)/test_comm_mpi $(BUILD)/test_comm_nccl $(MPI_HOST_CMDS)
MPI_MSG   := MPI: found $(MPICC): the training commands train data parallel under mpirun
TRAIN_CC  := $(MPICC)
TRAIN_OBJ := $(BUILD)/ioupos_mpi.o
TRAIN_MPI := -DIOUPOS_WITH_MPI
else
MPI_TESTS :=
MPI_MSG   := MPI: not used ($(if $(MPICC),MPI=0,mpicc not found)): one process only
TRAIN_CC  := $(CC)
TRAIN_OBJ := $(BUILD)/ioupos.o
TRAIN_MPI :=
endif

# ---- NCCL (section 16b's NCCL table, ioupos_comm_nccl_init in ioupos_cuda.cu) ------------------
# With nvcc (CUDA=1), MPI (MPI=1: the table takes the MPI table to share NCCL's id), nccl.h and
# libnccl found (NCCL=0 forces it off), $(BUILD)/ioupos_cuda.o is compiled with
# -DIOUPOS_WITH_NCCL and everything that links it links -lnccl too (CUDA_LIBS, DEV_LINK).
# Whatever is found, `make test` (MPI=1) builds $(BUILD)/test_comm_nccl: the NCCL table in the
# host build (tests/cuda_host/nccl_host.h: NCCL's calls over MPI on host memory), which
# tests/test_comm_nccl.sh runs under mpirun; $(BUILD)/test_comm_nccl_gpu is the same test on the
# real backend (scripts/gpu_check.sh).
NCCL_H      ?= $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h \
                 /usr/local/include/nccl.h))
NCCL_LIBDIR ?= $(patsubst %/,%,$(dir $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so \
                 $(CUDA_HOME)/lib/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so /usr/lib64/libnccl.so \
                 /usr/local/lib/libnccl.so))))
NCCL        ?= $(if $(and $(filter 1,$(CUDA)),$(filter 1,$(MPI)),$(NCCL_H),$(NCCL_LIBDIR)),1,0)
ifeq ($(NCCL),1)
NCCL_FLAGS  := -DIOUPOS_WITH_NCCL $(filter-out -I/usr/include/,-I$(dir $(NCCL_H)))
NCCL_LIBS   := -L$(NCCL_LIBDIR) -Wl,-rpath,$(NCCL_LIBDIR) -lnccl
CUDA_LIBS   += $(NCCL_LIBS)
DEV_LINK    += $(NCCL_LIBS)
CUDA_MSG    := $(CUDA_MSG); with NCCL ($(NCCL_H), -lnccl from $(NCCL_LIBDIR)): ioupos_comm_nccl_init
else
NCCL_FLAGS  :=
ifeq ($(CUDA),1)
CUDA_MSG    := $(CUDA_MSG); without NCCL ($(if $(filter 1,$(MPI)),$(if $(NCCL_H),$(if $(NCCL_LIBDIR),NCCL=0,libnccl.so not found),nccl.h not found),MPI is off))
endif
endif

all: $(DRIVERS) $(CUDA_OBJ)
	@echo "$(CUDA_MSG)"
	@echo "$(MPI_MSG)"

$(BUILD)/ioupos_mpi.o: drivers/ioupos.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(MPICC) -std=c99 $(CFLAGS) $(WARN) $(SIMD) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_MPI -c $< -o $@

$(BUILD)/test_comm_mpi: tests/test_comm.c tests/test_util.h tests/comm_util.h ioupos.h $(BUILD)/ioupos_mpi.o | stb
	$(MPICC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_MPI $< $(BUILD)/ioupos_mpi.o \
	  -o $@ $(LDLIBS)

# The NCCL table in the host build, over MPI (tests/cuda_host/nccl_host.h), and its test. The
# chunk of allreduce_sum is 96 bytes there (8 floats per rank with 3 ranks), so that the test's
# sums go in many rounds.
$(BUILD)/ioupos_cuda_host_mpi.o: ioupos_cuda.cu ioupos.h tests/cuda_host/cuda_host.h \
  tests/cuda_host/cublas_ref.h tests/cuda_host/nccl_host.h
	@mkdir -p $(BUILD)
	$(MPICC) -x c++ -std=c++11 $(CFLAGS) $(WARN) -ffp-contract=off -DIOUPOS_CUDA_HOST -DIOUPOS_WITH_NCCL \
	  -DIOUPOS_COMM_CHUNK_BYTES=96 -Itests/cuda_host $(CPPFLAGS) -c $< -o $@

$(BUILD)/test_comm_nccl: tests/test_comm_nccl.c tests/test_util.h tests/comm_util.h ioupos.h $(BUILD)/ioupos_mpi.o \
  $(BUILD)/ioupos_cuda_host_mpi.o | stb
	$(MPICC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) -DIOUPOS_WITH_MPI -DIOUPOS_WITH_NCCL -c $< -o $@.o
	$(MPICC) $(CFLAGS) $(OPENMP) $@.o $(BUILD)/ioupos_mpi.o $(BUILD)/ioupos_cuda_host_mpi.o -o $@ \
	  -lstdc++ $(LDLIBS)

# ioupos-simsiam and -dino on the same host build with MPI and NCCL: tests/test_parallel.sh runs
# data-parallel --device cuda through them (one emulated GPU per process, gradients over NCCL)
$(BUILD)/hostcuda/ioupos-simsiam-mpi $(BUILD)/hostcuda/ioupos-dino-mpi: $(BUILD)/hostcuda/ioupos-%-mpi: \
  drivers/ioupos_%.c drivers/pretrain.h drivers/train_cli.h \
  drivers/cli.h ioupos.h $(BUILD)/ioupos_mpi.o $(BUILD)/ioupos_cuda_host_mpi.o | stb
	@mkdir -p $(BUILD)/hostcuda
	$(MPICC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_CUDA -DIOUPOS_WITH_MPI \
	  -DIOUPOS_WITH_NCCL -DIOUPOS_GIT_COMMIT='"$(GIT_COMMIT)"' -c $< -o $@.o
	$(MPICC) $(CFLAGS) $(OPENMP) $@.o $(BUILD)/ioupos_mpi.o $(BUILD)/ioupos_cuda_host_mpi.o -o $@ \
	  -lstdc++ $(LDLIBS)

# the same test on a GPU: the nvcc object built with NCCL (scripts/gpu_check.sh, mpirun -np 1)
$(BUILD)/test_comm_nccl_gpu: tests/test_comm_nccl.c tests/test_util.h tests/comm_util.h ioupos.h $(BUILD)/ioupos_mpi.o \
  $(BUILD)/ioupos_cuda.o | stb
	$(MPICC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) -DIOUPOS_WITH_MPI -DIOUPOS_WITH_NCCL \
	  -DIOUPOS_TEST_CUDA_GPU -c $< -o $@.o
	$(MPICC) $(CFLAGS) $(OPENMP) $@.o $(BUILD)/ioupos_mpi.o $(BUILD)/ioupos_cuda.o -o $@ $(CUDA_LIBS) \
	  -lstdc++ $(LDLIBS)

# NCCL on or off is a flag of the object: $(BUILD)/ioupos_cuda.flags changes when it does, so the
# object is rebuilt (and never linked without -lnccl when it needs it).
$(BUILD)/ioupos_cuda.flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(NCCL_FLAGS)' | cmp -s - $@ || echo '$(NCCL_FLAGS)' >$@
.PHONY: FORCE
FORCE:

$(BUILD)/ioupos_cuda.o: ioupos_cuda.cu ioupos.h $(BUILD)/ioupos_cuda.flags
	@mkdir -p $(BUILD)
	@echo "$(NVCC) $(NCCL_FLAGS) -c ioupos_cuda.cu -o $@ (report: $(BUILD)/ioupos_cuda.ptxas.txt)"
	@$(NVCC) -std=c++17 $(NVCCFLAGS) --fmad=false $(CUDA_ARCH) -Werror all-warnings \
	  -Xcompiler -Wall,-Wextra,-Werror -Xptxas -v -I. $(NCCL_FLAGS) -c $< -o $@ 2>$(BUILD)/ioupos_cuda.ptxas.txt \
	  || { grep -v '^ptxas info' $(BUILD)/ioupos_cuda.ptxas.txt; rm -f $@; exit 1; }

# The host build of the same file (tests/cuda_host: kernels as host loops, reference cuBLAS) and
# the op test against the CPU backend; test_cuda_ops_gpu is the same test on the real backend.
$(BUILD)/ioupos_cuda_host.o: ioupos_cuda.cu ioupos.h tests/cuda_host/cuda_host.h tests/cuda_host/cublas_ref.h
	@mkdir -p $(BUILD)
	$(CXX) -std=c++11 $(CFLAGS) $(WARN) -ffp-contract=off -DIOUPOS_CUDA_HOST -Itests/cuda_host $(CPPFLAGS) \
	  -x c++ -c $< -o $@

# The host build's reducing kernels have 32 threads per block (their threads run as fibers);
# ioupos_cuda_host_gpublocks.o keeps the GPU's launch configuration for the op cases.
$(BUILD)/ioupos_cuda_host_gpublocks.o: ioupos_cuda.cu ioupos.h tests/cuda_host/cuda_host.h tests/cuda_host/cublas_ref.h
	@mkdir -p $(BUILD)
	$(CXX) -std=c++11 $(CFLAGS) $(WARN) -ffp-contract=off -DIOUPOS_CUDA_HOST -DIOUPOS_CUDA_HOST_GPU_BLOCKS \
	  -Itests/cuda_host $(CPPFLAGS) -x c++ -c $< -o $@

$(BUILD)/test_cuda_ops.o: tests/test_cuda_ops.c tests/test_util.h ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) -c $< -o $@

# The CPU backend it compares with is the portable implementation (no SIMD, no OpenMP), linked.
$(BUILD)/test_cuda_ops: $(BUILD)/test_cuda_ops.o $(BUILD)/ioupos_cuda_host.o $(BUILD)/ioupos_portable.o
	$(CXX) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/test_cuda_ops_gpublocks: $(BUILD)/test_cuda_ops.o $(BUILD)/ioupos_cuda_host_gpublocks.o \
  $(BUILD)/ioupos_portable.o
	$(CXX) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/test_cuda_ops_gpu: tests/test_cuda_ops.c tests/test_util.h ioupos.h $(BUILD)/ioupos_cuda.o \
  $(BUILD)/ioupos_portable.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) -DIOUPOS_TEST_CUDA_GPU $(CPPFLAGS) -c $< -o $@.o
	$(CXX) $(CFLAGS) $@.o $(BUILD)/ioupos_cuda.o $(BUILD)/ioupos_portable.o -o $@ $(CUDA_LIBS) $(LDLIBS)

# The op test on a real GPU (prints SKIP and succeeds without nvcc or without a usable GPU).
test-cuda:
ifeq ($(CUDA),1)
	@$(MAKE) --no-print-directory $(BUILD)/test_cuda_ops_gpu
	$(BUILD)/test_cuda_ops_gpu
else
	@echo "test-cuda: SKIP: $(if $(NVCC),CUDA=0,nvcc not found)"
endif

# The GPU benchmark: bench_simsiam and bench_finetune --device cuda (build/bench_*_cuda: the same
# sources with IOUPOS_WITH_CUDA, linked with the nvcc object) beside bench_torch.py --device cuda
# on the same GPU: the SimSiam step at C 48, batch 128, 96 x 96 views; the fine-tuning step
# (batch 64) and the sliding-window inference of a case; rates, ratios and device memory. The
# baseline's Python is .venv/bin/python or $IOUPOS_BENCH_PYTHON (scripts/gpu_check.sh). First
# --probe: without nvcc or a usable GPU it prints "bench-cuda: SKIP: <reason>" and succeeds.
# BENCH_SIMSIAM_ARGS / BENCH_FINETUNE_ARGS add options (--steps, --no-torch, --part, ...).
BENCH_CUDA := $(BUILD)/bench_simsiam_cuda $(BUILD)/bench_finetune_cuda
$(BENCH_CUDA): $(BUILD)/bench_%_cuda: bench/bench_%.c ioupos.h bench/bench_util.h $(BUILD)/ioupos.o \
  $(BUILD)/ioupos_cuda.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_CUDA $< $(BUILD)/ioupos.o \
	  -o $@ $(BUILD)/ioupos_cuda.o $(CUDA_LIBS) -lstdc++ $(LDLIBS)

BENCH_SIMSIAM_ARGS ?=
BENCH_FINETUNE_ARGS ?=
bench-cuda:
ifeq ($(CUDA),1)
	@$(MAKE) --no-print-directory $(BENCH_CUDA)
	@why=$$($(BUILD)/bench_simsiam_cuda --probe 2>&1); rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "bench-cuda: SKIP: $$why"; exit 0; fi; \
	if [ $$rc -ne 0 ]; then echo "bench-cuda: FAILED: the CUDA backend does not start: $$why"; exit 1; fi; \
	echo "bench-cuda: $$why"; \
	$(BUILD)/bench_simsiam_cuda --device cuda $(BENCH_SIMSIAM_ARGS); r1=$$?; \
	$(BUILD)/bench_finetune_cuda --device cuda $(BENCH_FINETUNE_ARGS); r2=$$?; \
	[ $$r1 -eq 0 ] && [ $$r2 -eq 0 ]
else
	@echo "bench-cuda: SKIP: $(if $(NVCC),CUDA=0,nvcc not found)"
endif

# stb comes from Debian's libstb-dev: install it when we are root, else say how.
stb:
	@if [ ! -f $(STB_DIR)/stb_image.h ] || [ ! -f $(STB_DIR)/stb_image_write.h ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "stb headers missing: installing libstb-dev"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libstb-dev) >/dev/null || exit 1; \
	  else \
	    echo "error: stb headers not found in $(STB_DIR). Run: sudo apt-get install -y libstb-dev"; exit 1; \
	  fi; \
	fi

# The implementation, compiled once (SIMD kernels, OpenMP threads: results do not depend on the
# count) and linked into every command, the C tests, the helpers and most benches; they include
# ioupos.h for its API only.
$(BUILD)/ioupos.o: drivers/ioupos.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(SIMD) $(OPENMP) $(CPPFLAGS) -c $< -o $@

# The portable implementation: no SIMD kernel (IOUPOS_GEMM_NO_SIMD even under -march flags), no
# OpenMP, as a plain `cc` build of the header gives. The *_portable tests and the sampler,
# loader and preprocessing benches link it.
$(BUILD)/ioupos_portable.o: drivers/ioupos.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) -DIOUPOS_GEMM_NO_SIMD $(CPPFLAGS) -c $< -o $@

$(BUILD)/ioupos-%: drivers/ioupos_%.c drivers/cli.h ioupos.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

# The --device commands: with the CUDA backend when it is built (DEV_FLAGS, DEV_LINK).
$(BUILD)/ioupos-embed: drivers/ioupos_embed.c drivers/cli.h ioupos.h $(BUILD)/ioupos.o $(CUDA_OBJ) | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $(DEV_FLAGS) $< $(BUILD)/ioupos.o -o $@ \
	  $(DEV_LINK) $(LDLIBS)

# The training commands record the commit they were built from (flags.json), "+dirty" with
# uncommitted changes; evaluated only when they are built.
GIT_COMMIT = $(shell c=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown); \
  [ -n "$$(git status --porcelain 2>/dev/null | head -n 1)" ] && c="$$c+dirty"; echo "$$c")
# With MPI, built by $(MPICC) on the MPI build of the implementation (TRAIN_*).
$(BUILD)/ioupos-simsiam $(BUILD)/ioupos-dino $(BUILD)/ioupos-finetune: $(BUILD)/ioupos-%: \
  drivers/ioupos_%.c drivers/pretrain.h drivers/train_cli.h drivers/cli.h ioupos.h $(TRAIN_OBJ) \
  $(CUDA_OBJ) | stb
	$(TRAIN_CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $(DEV_FLAGS) $(TRAIN_MPI) $(NCCL_FLAGS) \
	  -DIOUPOS_GIT_COMMIT='"$(GIT_COMMIT)"' $< $(TRAIN_OBJ) -o $@ $(DEV_LINK) $(LDLIBS)

# The same four commands on the host build of the CUDA backend (tests/cuda_host: kernels as host
# loops, any machine): tests/test_device.sh runs --device cuda through them.
HOSTCUDA_CMDS := $(BUILD)/hostcuda/ioupos-embed $(BUILD)/hostcuda/ioupos-simsiam \
                 $(BUILD)/hostcuda/ioupos-dino $(BUILD)/hostcuda/ioupos-finetune
$(BUILD)/hostcuda/ioupos-%: drivers/ioupos_%.c drivers/pretrain.h drivers/train_cli.h drivers/cli.h \
  ioupos.h $(BUILD)/ioupos.o $(BUILD)/ioupos_cuda_host.o | stb
	@mkdir -p $(BUILD)/hostcuda
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_CUDA \
	  -DIOUPOS_GIT_COMMIT='"$(GIT_COMMIT)"' -c $< -o $@.o
	$(CXX) $(CFLAGS) $(OPENMP) $@.o $(BUILD)/ioupos.o $(BUILD)/ioupos_cuda_host.o -o $@ $(LDLIBS)

# bench_simsiam and bench_finetune on the same host build: tests/test_bench_cuda.sh runs their
# --device cuda at test sizes (what make bench-cuda runs on a GPU).
HOSTCUDA_BENCHES := $(BUILD)/hostcuda/bench_simsiam $(BUILD)/hostcuda/bench_finetune
$(HOSTCUDA_BENCHES): $(BUILD)/hostcuda/bench_%: bench/bench_%.c bench/bench_util.h ioupos.h \
  $(BUILD)/ioupos.o $(BUILD)/ioupos_cuda_host.o | stb
	@mkdir -p $(BUILD)/hostcuda
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_CUDA -c $< -o $@.o
	$(CXX) $(CFLAGS) $(OPENMP) $@.o $(BUILD)/ioupos.o $(BUILD)/ioupos_cuda_host.o -o $@ $(LDLIBS)

$(BUILD)/ioupos-sweep-plot: drivers/ioupos_sweep_plot.c ioupos.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

# Helpers of tests/test_embed.sh: compare .npy files, re-prefix safetensors tensor names.
TEST_HELPERS := $(BUILD)/npy_compare $(BUILD)/st_rename $(BUILD)/st_compare $(HOSTCUDA_CMDS) \
                $(HOSTCUDA_BENCHES)
$(BUILD)/npy_compare: tests/npy_compare.c tests/npy.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)
$(BUILD)/st_rename: tests/st_rename.c ioupos.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)
$(BUILD)/st_compare: tests/st_compare.c ioupos.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

# The C tests include ioupos.h for its API and link the implementation: build/ioupos.o (what the
# commands run), and for the GEMM, the layers and the attention also build/ioupos_portable.o
# (test_*_portable: the scalar kernels).
TEST_H := tests/test_util.h tests/npy.h tests/fixture_util.h tests/fd_check.h tests/tmp_tree.h ioupos.h
$(BUILD)/test_%: tests/test_%.c $(TEST_H) $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

$(BUILD)/test_cublas_load: tests/test_cublas_load.c $(TEST_H) $(BUILD)/ioupos.o $(CUDA_OBJ) | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(DEV_LINK) $(LDLIBS)

# test_memory includes the implementation itself (a counting IOUPOS_MALLOC): the drivers' SIMD
$(BUILD)/test_memory: OPENMP += $(SIMD)

$(BUILD)/test_%_portable: tests/test_%.c $(TEST_H) $(BUILD)/ioupos_portable.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< $(BUILD)/ioupos_portable.o -o $@ $(LDLIBS)

# Thread-count independence and the SIMD paths of sections 10-12 and the encoder, on
# build/ioupos.o (the drivers' build). --wrap=malloc: the library's malloc calls go to the
# test's allocator, which can be told to fail.
$(BUILD)/test_threads: tests/test_threads.c $(TEST_H) $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ \
	  -Wl,--wrap=malloc $(LDLIBS)

# OpenBLAS (Debian's libopenblas-dev) is the baseline when installed; the bench says so if not.
$(BUILD)/bench_gemm: bench/bench_gemm.c ioupos.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(BLAS) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(if $(BLAS),-lopenblas,) $(LDLIBS)

# The encoder's training step beside PyTorch (bench/bench_torch.py, when .venv exists).
$(BUILD)/bench_encoder: bench/bench_encoder.c ioupos.h bench/bench_util.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

# The full SimSiam training step beside PyTorch + lightly (bench_torch.py simsiam, when .venv exists).
$(BUILD)/bench_simsiam: bench/bench_simsiam.c ioupos.h bench/bench_util.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

# SwinUNETR fine-tuning step and sliding-window inference beside PyTorch + MONAI (finetune / infer).
$(BUILD)/bench_finetune: bench/bench_finetune.c ioupos.h bench/bench_util.h $(BUILD)/ioupos.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) $< $(BUILD)/ioupos.o -o $@ $(LDLIBS)

# sampler, loader, preprocessing: the portable build, one thread per worker
$(BUILD)/bench_%: bench/bench_%.c ioupos.h $(BUILD)/ioupos_portable.o | stb
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< $(BUILD)/ioupos_portable.o -o $@ $(LDLIBS)

# The header must compile cleanly as C++ too (declarations and implementation).
$(BUILD)/cxx_check: tests/cxx_check.cpp ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CXX) -std=c++11 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)

# The README's consumer build: declarations in one file, implementation in another, the
# project's own stb in a third (IOUPOS_NO_STB_IMPLEMENTATION).
$(BUILD)/consumer_check: tests/consumer/main.c tests/consumer/impl.c tests/consumer/stb_impl.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) -w -I$(STB_DIR) -c tests/consumer/stb_impl.c -o $(BUILD)/consumer_stb.o
	$(CC) -std=c99 $(CFLAGS) $(WARN) -D_POSIX_C_SOURCE=200809L -I. -I$(STB_DIR) tests/consumer/main.c \
	  tests/consumer/impl.c $(BUILD)/consumer_stb.o -o $@ -lm -lpthread

$(BUILD)/static_check: tests/consumer/static_check.c ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)

# Drop-in parts. IOUPOS_ONLY_SAMPLER (sections 1-4) as strict C99 and C++11 with the C library
# alone: no _POSIX_C_SOURCE, no include path (no stb), no -lpthread; the build also fails when the
# preprocessor opens a POSIX, pthread, OpenMP or stb header.
ONLY_BAD_HEADERS := (^|/)(pthread|unistd|fcntl|dirent|signal|omp|stb_image|stb_image_write)\.h$$|(^|/)sys/stat\.h$$
$(BUILD)/sampler_only: tests/consumer/sampler_only.c tests/test_util.h ioupos.h
	@mkdir -p $(BUILD)
	@if $(CC) -std=c99 -E $< | sed -n 's/^# [0-9]* "\(.*\)".*/\1/p' | sort -u | grep -E '$(ONLY_BAD_HEADERS)'; then \
	  echo "IOUPOS_ONLY_SAMPLER must not include the headers above"; exit 1; fi
	$(CC) -std=c99 -pedantic $(CFLAGS) $(WARN) $< -o $@ -lm
$(BUILD)/sampler_only_cxx: tests/consumer/sampler_only.c tests/test_util.h ioupos.h
	@mkdir -p $(BUILD)
	$(CXX) -std=c++11 -pedantic $(CFLAGS) $(WARN) -x c++ $< -x none -o $@ -lm

# IOUPOS_ONLY_DATA (sections 1-9, no neural core): stb, POSIX and pthreads, no OpenMP.
$(BUILD)/data_only: tests/consumer/data_only.c tests/test_util.h ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CC) -std=c99 $(CFLAGS) $(WARN) $(CPPFLAGS) $< -o $@ $(LDLIBS)
$(BUILD)/data_only_cxx: tests/consumer/data_only.c tests/test_util.h ioupos.h | stb
	@mkdir -p $(BUILD)
	$(CXX) -std=c++11 $(CFLAGS) $(WARN) $(CPPFLAGS) -x c++ $< -x none -o $@ $(LDLIBS)

CONSUMER := $(BUILD)/cxx_check $(BUILD)/consumer_check $(BUILD)/static_check $(BUILD)/sampler_only \
            $(BUILD)/sampler_only_cxx $(BUILD)/data_only $(BUILD)/data_only_cxx

# What only the tests that IOUPOS_TEST_SKIP leaves out need is not built (make test-asan leaves
# out the command runs): their programs, the host-build commands (test_device.sh,
# test_parallel.sh), benches (test_bench_cuda.sh), MPI commands (test_parallel.sh) and the NCCL
# table's test (test_comm_nccl.sh).
TEST_BUILD := $(filter-out $(addprefix $(BUILD)/,$(IOUPOS_TEST_SKIP)),$(TESTS)) $(DRIVERS) \
  $(filter-out $(HOSTCUDA_CMDS) $(HOSTCUDA_BENCHES),$(TEST_HELPERS)) \
  $(filter-out $(addprefix $(BUILD)/,$(IOUPOS_TEST_SKIP)),$(CONSUMER)) \
  $(filter-out $(MPI_HOST_CMDS) $(BUILD)/test_comm_nccl,$(MPI_TESTS)) \
  $(if $(filter-out $(IOUPOS_TEST_SKIP),test_comm_nccl.sh),$(filter $(BUILD)/test_comm_nccl,$(MPI_TESTS))) \
  $(if $(filter-out $(IOUPOS_TEST_SKIP),test_device.sh test_parallel.sh),$(HOSTCUDA_CMDS)) \
  $(if $(filter-out $(IOUPOS_TEST_SKIP),test_bench_cuda.sh),$(HOSTCUDA_BENCHES)) \
  $(if $(filter-out $(IOUPOS_TEST_SKIP),test_parallel.sh),$(filter $(MPI_HOST_CMDS),$(MPI_TESTS)))
test: $(TEST_BUILD)
	@echo "$(MPI_MSG)"
	@IOUPOS_MPI=$(MPI) IOUPOS_TEST_JOBS=$${IOUPOS_TEST_JOBS:-$(NPROC)} sh tests/run.sh $(BUILD) $(TESTS) $(CONSUMER)

# The loader's threads under ThreadSanitizer (no OpenMP there: libgomp is not instrumented, and
# ThreadSanitizer would report its barriers).
test-tsan: | stb
	$(MAKE) --no-print-directory BUILD=$(BUILD)/tsan CFLAGS="-O1 -g -fsanitize=thread" OPENMP= $(BUILD)/tsan/test_data \
	  $(BUILD)/tsan/test_volume_loader
	$(BUILD)/tsan/test_data
	$(BUILD)/tsan/test_volume_loader

# Reference fixtures (committed; CI needs no Python): PyTorch + MONAI in a pinned venv.
VENV ?= .venv
$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/reference/requirements.txt
fixtures: $(VENV)/bin/python
	$(VENV)/bin/python tests/reference/augment_fixture.py
	$(VENV)/bin/python tests/reference/prep_fixture.py
	$(VENV)/bin/python tests/reference/layers_fixture.py
	$(VENV)/bin/python tests/reference/attention_fixture.py
	$(VENV)/bin/python tests/reference/safetensors_fixture.py
	$(VENV)/bin/python tests/reference/losses_fixture.py
	$(VENV)/bin/python tests/reference/optim_fixture.py
	$(VENV)/bin/python tests/reference/model_fixture.py
	$(VENV)/bin/python tests/reference/decoder_fixture.py
	$(VENV)/bin/python tests/reference/segeval_fixture.py
	$(VENV)/bin/python tests/reference/swinunetr_fixture.py
	$(VENV)/bin/python tests/reference/embed_fixture.py
	$(VENV)/bin/python tests/reference/eval3d_fixture.py

# Our checkpoints load into MONAI with load_state_dict(strict=True) and reproduce its outputs.
check-monai: $(BUILD)/test_model $(VENV)/bin/python
	cd $(BUILD)/.. && $(BUILD)/test_model >/dev/null
	$(VENV)/bin/python tests/reference/check_ioupos_checkpoint.py $(BUILD)/ioupos_swin2d.safetensors swin2d
	$(VENV)/bin/python tests/reference/check_ioupos_checkpoint.py $(BUILD)/ioupos_swin3d.safetensors swin3d

# The tests of `make test` under AddressSanitizer + UndefinedBehaviorSanitizer (fewer draws:
# ~10x slower), each with a time limit of 1800 s unless IOUPOS_TEST_TIMEOUT says otherwise, less
# the longest command scripts (training runs: 17 of the step's 20 minutes on 2 cores; the
# library code under them runs here in the C tests, the commands' own file, resume and failure
# handling in test_rundir, test_ckpt_finite, test_cli, test_preflight and test_prep; the CUDA
# backend's host build in test_cuda_ops).
# `make test-asan-all` runs those too. CUDA=0 there: the nvcc object is not instrumented and the
# commands need not link it (their --device cuda runs in test_device, outside ASan, as the
# benchmarks' in test_bench_cuda: half a minute on the host build, ten times that under ASan).
# The 3D runs are left out the same way: test_pretrain3d.sh and test_finetune3d.sh are command
# runs, test_eval3d a MONAI-sized 3D window (7 x 7 x 7) over two volumes about ten times, 40 s
# here and minutes under ASan; the 3D loader's C test (test_volume_loader) stays in. test_memory
# is left out too (5 minutes under ASan; its model steps allocate as test_model's, which stays).
# test_parallel.sh (data-parallel command runs under mpirun) too, and test_comm_nccl.sh (its
# host build of ioupos_cuda.cu with MPI is one more ASan compile of the backend; it ran clean
# under ASan when written); the MPI table's test (test_comm.sh) stays in. And the consumer checks
# ($(CONSUMER): the header compiled as C++, split across files, static, the drop-in parts):
# build checks, each a whole compile of the header (70 s of CPU here) for programs that run a
# few calls already run under ASan by the C tests.
ASAN_SKIP := test_finetune.sh test_pretrain.sh test_sweep.sh test_device.sh test_bench_cuda.sh \
             test_pretrain3d.sh test_finetune3d.sh test_eval3d test_memory test_parallel.sh \
             test_comm_nccl.sh $(notdir $(CONSUMER))
test-asan: | stb
	IOUPOS_TEST_TIMEOUT=$${IOUPOS_TEST_TIMEOUT:-1800} IOUPOS_TEST_SKIP="$(ASAN_SKIP)" \
	  $(MAKE) --no-print-directory BUILD=$(BUILD)/asan CFLAGS="-O1 -g $(SAN)" CUDA=0 \
	  IOUPOS_TEST_DRAWS=$${IOUPOS_TEST_DRAWS:-100000} test
test-asan-all: | stb
	IOUPOS_TEST_TIMEOUT=$${IOUPOS_TEST_TIMEOUT:-1800} \
	  $(MAKE) --no-print-directory BUILD=$(BUILD)/asan CFLAGS="-O1 -g $(SAN)" CUDA=0 \
	  IOUPOS_TEST_DRAWS=$${IOUPOS_TEST_DRAWS:-100000} test

bench: $(BENCHES)
	@for b in $(BENCHES); do $$b || exit 1; done

# The data-parallel SimSiam step (bench/bench_parallel.c, built with $(MPICC) on the MPI build of
# the implementation): `make bench-parallel` runs it under mpirun -np 1, then -np 2, each rank
# on one OpenMP thread (--threads 1: the same cores for both runs, a fair comparison), prints
# the runs' figures and the scaling, pairs/s of the global batch at np 2 / at np 1.
# On a shared machine one run can get a core less than the other (runs swung 2x here with other
# people's builds on the same 2 cores), so the pair is run BENCH_PARALLEL_ROUNDS times (2),
# alternating np 1 and np 2, and the scaling is that of the best pairs/s of each (the run that
# was least disturbed); every round's ratio is printed too. About 75 s on 2 cores, so it is not
# part of `make bench`. Without MPI (make MPI=0, no mpicc) or without mpirun it prints
# "bench-parallel: SKIP: <reason>" and succeeds.
# BENCH_PARALLEL_ARGS adds options (--config tiny, --batch, --steps, --warmup);
# IOUPOS_MPIRUN_FLAGS adds mpirun flags (as tests/test_comm.sh). As root, Open MPI needs
# OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), which the target sets; --oversubscribe lets 2 ranks start
# on a machine that Open MPI counts fewer slots on. Outputs: $(BUILD)/bench_parallel.np*.r*.txt.
BENCH_PARALLEL_ARGS ?=
BENCH_PARALLEL_ROUNDS ?= 2
ifeq ($(MPI),1)
$(BUILD)/bench_parallel: bench/bench_parallel.c bench/bench_util.h ioupos.h $(BUILD)/ioupos_mpi.o | stb
	$(MPICC) -std=c99 $(CFLAGS) $(WARN) $(OPENMP) $(CPPFLAGS) -DIOUPOS_WITH_MPI $< $(BUILD)/ioupos_mpi.o \
	  -o $@ $(LDLIBS)

bench-parallel:
	@if ! command -v mpirun >/dev/null 2>&1; then \
	  echo "bench-parallel: SKIP: no mpirun (Debian: apt-get install openmpi-bin)"; exit 0; fi; \
	$(MAKE) --no-print-directory $(BUILD)/bench_parallel || exit 1; \
	if [ "$$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi; \
	rm -f $(BUILD)/bench_parallel.np*.txt; \
	for r in $$(seq 1 $(BENCH_PARALLEL_ROUNDS)); do for np in 1 2; do \
	  f=$(BUILD)/bench_parallel.np$$np.r$$r.txt; echo "== round $$r, mpirun -np $$np"; \
	  OMP_NUM_THREADS=1 timeout -k 5 600 mpirun --oversubscribe $${IOUPOS_MPIRUN_FLAGS:-} -np $$np \
	    $(BUILD)/bench_parallel --threads 1 $(BENCH_PARALLEL_ARGS) >$$f 2>&1; \
	  rc=$$?; cat $$f; \
	  if [ $$rc -ne 0 ]; then echo "bench-parallel: FAILED: mpirun -np $$np exited with status $$rc"; exit 1; fi; \
	  grep -q "^bench_parallel: result np $$np " $$f || { echo "bench-parallel: FAILED: no result line in $$f"; exit 1; }; \
	done; done; \
	cat $(BUILD)/bench_parallel.np*.r*.txt | awk -v n="$(NPROC)" ' \
	  /^bench_parallel: result np / { r[$$4, ++k[$$4]] = $$6; if ($$6 > best[$$4]) best[$$4] = $$6 } \
	  END { \
	    for (i = 1; i <= k[1] && i <= k[2]; ++i) printf "bench-parallel: round %d: np 2 / np 1 = %.2f / %.2f = %.2f\n", i, r[2, i], r[1, i], r[2, i] / r[1, i]; \
	    printf "bench-parallel: scaling np 2 / np 1: %.2f (best of %d rounds: %.2f / %.2f pairs/s of the global batch, 1 OpenMP thread per rank)\n", best[2] / best[1], k[1], best[2], best[1]; \
	    printf "bench-parallel: this machine has %s cores, shared with whatever else runs on it: the 2 ranks use 2 cores where the 1-rank run uses 1; 2.00 would be perfect scaling, the shortfall the cost of data parallelism (SyncBN and loss all-gathers, the gradient all-reduce, load imbalance) and of any core the ranks had to share (see each run'"'"'s load average)\n", n }'
else
$(BUILD)/bench_parallel:
	@echo "$@: needs MPI ($(if $(MPICC),MPI=0,mpicc not found))"; exit 1

bench-parallel:
	@echo "bench-parallel: SKIP: $(if $(MPICC),MPI=0,mpicc not found): built without MPI"
endif

# Fuzz targets (libFuzzer; clang with compiler-rt, Debian's libclang-rt-14-dev). `make fuzz`
# runs each for FUZZ_SECONDS on a scratch copy of its seed corpus; `make fuzz-replay` feeds the
# committed corpus once through an ASan/UBSan build with a standalone main (any compiler).
FUZZ         := png nifti split safetensors
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
fuzz: | stb
	@mkdir -p $(BUILD)/fuzz
	@for t in $(FUZZ); do \
	  $(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined $(WARN) $(CPPFLAGS) fuzz/fuzz_$$t.c -o $(BUILD)/fuzz/fuzz_$$t -lm -lpthread || exit 1; \
	  rm -rf $(BUILD)/fuzz/corpus_$$t && cp -r fuzz/corpus/$$t $(BUILD)/fuzz/corpus_$$t; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  (cd $(BUILD)/fuzz && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 corpus_$$t 2>&1 | tail -n 2) || exit 1; \
	  if ls $(BUILD)/fuzz/crash-* $(BUILD)/fuzz/leak-* $(BUILD)/fuzz/oom-* $(BUILD)/fuzz/timeout-* >/dev/null 2>&1; then echo "fuzz_$$t found a failing input in $(BUILD)/fuzz"; exit 1; fi; \
	done

$(BUILD)/fuzz/ioupos.o: drivers/ioupos.c ioupos.h | stb
	@mkdir -p $(BUILD)/fuzz
	$(CC) -std=c99 -O1 -g $(SAN) $(WARN) $(CPPFLAGS) -c $< -o $@
$(BUILD)/fuzz/replay_%: fuzz/fuzz_%.c fuzz/replay_main.h ioupos.h $(BUILD)/fuzz/ioupos.o | stb
	$(CC) -std=c99 -O1 -g $(SAN) $(WARN) -DIOUPOS_FUZZ_REPLAY $(CPPFLAGS) $< $(BUILD)/fuzz/ioupos.o -o $@ -lm -lpthread

fuzz-replay: $(FUZZ:%=$(BUILD)/fuzz/replay_%)
	@for t in $(FUZZ); do $(BUILD)/fuzz/replay_$$t fuzz/corpus/$$t/* || exit 1; done

# The story end to end: phantom CT (or DATA=<folder of NIfTI>, LABELS=<folder of CT + labels>),
# preprocessing, crop pairs, SimSiam pretraining, fine-tuning from it and from scratch.
# DIMS=3: the same story on volumes (scripts/demo3d.sh: phantom only).
DATA ?=
LABELS ?=
DIMS ?=
demo: $(DRIVERS)
	@if [ "$(DIMS)" = 3 ]; then sh scripts/demo3d.sh $(BUILD); \
	 elif [ -z "$(DIMS)" ] || [ "$(DIMS)" = 2 ]; then sh scripts/demo.sh $(BUILD) "$(DATA)" "$(LABELS)"; \
	 else echo "make demo: DIMS=$(DIMS): expected 2 (the default) or 3" >&2; exit 2; fi

clean:
	rm -rf $(BUILD)
