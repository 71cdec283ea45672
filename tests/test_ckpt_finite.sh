#!/bin/sh
# tests/test_ckpt_finite.sh — checkpoints and training states that hold a NaN or an infinity
# are refused by every command that loads one (ioupos-embed, ioupos-finetune --chkpt_path, the
# --resume of ioupos-simsiam / ioupos-dino / ioupos-finetune), naming the file, the tensor, the
# element and the value; ioupos-embed never writes a non-finite feature; a folder given where a
# file is expected says "is a directory".
# Usage: sh tests/test_ckpt_finite.sh BUILD_DIR   (run by tests/run.sh)
# The bad files are made here by overwriting one element of a tensor of a saved .safetensors
# (st_poke below: od, sed, dd; no helper program of its own; st_rename makes one layout).
# One thread; about 10 s on 2 cores.
# Prints "FAIL: ..." for each failed check, then "test_ckpt_finite: N checks passed, M failed";
# exits 1 if any check failed.

root=$(cd "$(dirname "$0")/.." && pwd)
me=test_ckpt_finite prog=ioupos-embed
. "$(dirname "$0")/cli_lib.sh"

embed=$bin
need ioupos-finetune ioupos-simsiam ioupos-dino ioupos-phantom ioupos-prep st_rename
fix=$root/tests/fixtures/embed
w2=$root/tests/fixtures/model/swin2d_weights.safetensors
w3=$root/tests/fixtures/model/swin3d_weights.safetensors

# Little-endian bytes (as printf octal escapes) of the values written into files.
NAN32='\000\000\300\177'      # float32 quiet NaN 0x7fc00000
PINF32='\000\000\200\177'     # float32 +inf 0x7f800000
NINF32='\000\000\200\377'     # float32 -inf 0xff800000
PINF64='\000\000\000\000\000\000\360\177' # float64 +inf 0x7ff0000000000000

# st_poke FILE TENSOR INDEX BYTES: overwrites element INDEX of tensor TENSOR of the safetensors
# FILE with BYTES (4 for F32, 8 for F64), in place. The header is one line of compact JSON
# ("name":{"dtype":"F32","shape":[...],"data_offsets":[begin,end]}); the data starts at 8 + its
# length. Fails (status 1) when the tensor is not in the file.
st_poke() {
  hl=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  esc=$(printf '%s' "$2" | sed 's/\./\\./g')
  dt=$(head -c $((8 + hl)) "$1" | tail -c "$hl" |
    sed -n "s/.*\"$esc\":{\"dtype\":\"\([A-Z0-9]*\)\",\"shape\":\[[0-9,]*\],\"data_offsets\":\[\([0-9]*\),.*/\1 \2/p")
  [ -n "$dt" ] || { echo "st_poke: no tensor $2 in $1"; return 1; }
  size=4; [ "${dt% *}" = F64 ] && size=8
  printf "$4" | dd of="$1" bs=1 seek=$((8 + hl + ${dt#* } + size * $3)) conv=notrunc 2>/dev/null
}
# st_names FILE: the tensor names of a safetensors file, one a line
st_names() {
  hl=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  head -c $((8 + hl)) "$1" | tail -c "$hl" | tr '{' '\n' | sed -n 's/.*"\([^"]*\)":$/\1/p'
}
# first_named FILE PATTERN: the first tensor of FILE whose name matches the grep PATTERN
first_named() { st_names "$1" | grep -- "$2" | head -n 1; }

# ---- the helper itself: a poked fixture differs from the original in exactly those bytes -------
cp "$w2" poke.safetensors
st_poke poke.safetensors layers2.0.blocks.1.attn.qkv.weight 5 "$NAN32"
nb=$(cmp -l "$w2" poke.safetensors | wc -l | tr -d ' ')
check "st_poke changes 1 to 4 bytes of the file (got $nb)" [ "$nb" -ge 1 -a "$nb" -le 4 ]
if st_poke poke.safetensors no.such 0 x >/dev/null 2>&1; then
  fail "st_poke accepted a tensor that is not there"
else pass; fi

# ---- a. ioupos-embed -----------------------------------------------------------------------------
# refused NAME PATTERN ARGS...: exit 1, PATTERN on stderr, no NAME.npy, no NAME.files.txt,
# nothing on stdout
refused() {
  name=$1; pattern=$2; shift 2
  rm -f "$name.files.txt"
  expect_refusal "$name" 1 "$pattern" --output "$name.npy" "$@"
  check "$name: no file list left" [ ! -e "$name.files.txt" ]
  check "$name: no staging file left" [ -z "$(find . -name "$name.*tmp*")" ]
}
use "$embed"
run ok --chkpt_path "$w2" --data_dir "$fix/png" --output ok.npy --embedding_size 6 --threads 1
check "a: the unpatched checkpoint embeds (got $rc; $(cat ok.err))" [ "$rc" -eq 0 ]
# a NaN weight (bare SwinTransformer names)
cp "$w2" nan.safetensors
st_poke nan.safetensors layers2.0.blocks.1.attn.qkv.weight 5 "$NAN32"
refused a_nan "ioupos-embed: nan.safetensors: tensor 'layers2.0.blocks.1.attn.qkv.weight' is not finite: element 5 (of [0-9]*) is NaN" \
  --chkpt_path nan.safetensors --data_dir "$fix/png" --embedding_size 6 --threads 1
check "a_nan: the file is named once" \
  [ "$(grep -o 'nan\.safetensors' a_nan.err | wc -l | tr -d ' ')" -eq 1 ]
# +inf in one of our checkpoints (the encoder under backbone., a head beside it)
"$bdir/st_rename" "$w2" ours.safetensors backbone. projection_head.layers.0.weight
cp ours.safetensors inf.safetensors
st_poke inf.safetensors backbone.patch_embed.proj.bias 3 "$PINF32"
refused a_inf "ioupos-embed: inf.safetensors: tensor 'backbone.patch_embed.proj.bias' is not finite: element 3 (of 6) is +inf" \
  --chkpt_path inf.safetensors --data_dir "$fix/png" --embedding_size 6 --threads 1
# a NaN in the head, which embedding ignores (not loaded): the features are the same
cp ours.safetensors head.safetensors
st_poke head.safetensors projection_head.layers.0.weight 0 "$NAN32"
run a_head --chkpt_path head.safetensors --data_dir "$fix/png" --output head.npy \
  --embedding_size 6 --threads 1
check "a: a NaN in an ignored tensor does not matter (got $rc; $(cat a_head.err))" [ "$rc" -eq 0 ]
check "a: ... the same features" cmp -s ok.npy head.npy
# finite weights, but a NaN voxel in the second volume: its feature is NaN and never written
mkdir vol
cp "$fix"/vol/* vol/
printf "$NAN32" | dd of=vol/b_vol.nii bs=1 seek=352 conv=notrunc 2>/dev/null # vox_offset 352
refused a_feat "ioupos-embed: vol/b_vol.nii: its feature is not finite (value [0-9]* of 96 is NaN)" \
  --chkpt_path "$w3" --data_dir vol --spatial_dims 3 --embedding_size 6 --window_size 3 \
  --threads 1
# a folder as the checkpoint
mkdir ckdir
refused a_dir "ioupos-embed: ckdir is a directory" \
  --chkpt_path ckdir --data_dir "$fix/png" --embedding_size 6
check "a_dir: no 'out of memory' ($(cat a_dir.err))" sh -c '! grep -q "out of memory" a_dir.err'

# ---- data for the training commands: 4 labelled phantom cases, split 2/1/1 ----------------------
"$bdir/ioupos-phantom" --output_dir ph --n_cases 4 --seed 0 --size 96x80x16 --spacing 4,4,2.5 \
  --split 2,1,1 >ph.out 2>ph.err &&
  "$bdir/ioupos-prep" --data_dir ph/images --labels_dir ph/labels --split_path ph/split.json \
    --output_dir d --size_x 4 --size_y 4 --pad_to 32 --num_workers 2 >prep.out 2>prep.err
check "phantom data prepared ($(tail -n 1 prep.err))" [ $? -eq 0 ]

# ---- b. ioupos-finetune --chkpt_path: the NaN checkpoint, a folder ------------------------------
common="--data_dir d --split_path ph/split.json --crop_size 32 --batch_size 4 --threads 1
  --chkpt_dir ck --embedding_size 6 --num_workers 0"
use "$bdir/ioupos-finetune"
ft_refused() { # ft_refused NAME PATTERN ARGS...: exit 1, no run directory, nothing on stdout
  name=$1; pattern=$2; shift 2
  rm -rf ck/bad
  expect_error "$name" 1 "$pattern" $common --run_name bad "$@"
  check "$name: no run directory left" [ ! -e ck/bad ]
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
}
run b_ok $common --run_name ok --n_epochs 0 --chkpt_path "$w2"
check "b: the unpatched encoder loads (got $rc; $(tail -n 1 b_ok.err))" [ "$rc" -eq 0 ]
ft_refused b_nan "^ioupos-finetune: error: nan.safetensors: tensor 'layers2.0.blocks.1.attn.qkv.weight' is not finite: element 5 (of [0-9]*) is NaN" \
  --n_epochs 0 --chkpt_path nan.safetensors
check "b_nan: the file is named once" \
  [ "$(grep -o 'nan\.safetensors' b_nan.err | wc -l | tr -d ' ')" -eq 1 ]
ft_refused b_nan_train "nan.safetensors: tensor 'layers2.0.blocks.1.attn.qkv.weight' is not finite" \
  --n_epochs 1 --warmup_epochs 0 --chkpt_path nan.safetensors
ft_refused b_dir "ckdir is a directory" --n_epochs 0 --chkpt_path ckdir
check "b_dir: no 'out of memory' ($(cat b_dir.err))" sh -c '! grep -q "out of memory" b_dir.err'
ft_refused b_split "ckdir is a directory" --n_epochs 0 --split_path ckdir

# ---- c. --resume of a state holding a non-finite value ------------------------------------------
# resume_refused NAME RUN_DIR PATTERN ARGS...: the --resume run exits 1 naming the value, and
# leaves the run directory as it was
resume_refused() {
  name=$1; dir=$2; pattern=$3; shift 3
  (cd "$dir" && ls -a . && cksum ./*) >"$name.before" 2>&1
  expect_error "$name" 1 "$pattern" "$@" --resume
  (cd "$dir" && ls -a . && cksum ./*) >"$name.after" 2>&1
  check "$name: the run directory is left as it was" cmp -s "$name.before" "$name.after"
  check "$name: nothing on stdout" [ ! -s "$name.out" ]
}
ssl="--data_dir d/train --chkpt_dir ssl --low_resource_mode --embedding_size 6 --batch_size 4
  --crop_size 32 --n_epochs 1 --num_workers 0 --threads 1"
# SimSiam: a model weight, then an SGD momentum
use "$bdir/ioupos-simsiam"
run c_ss $ssl --run_name s --max_steps 1
check "c: a one-step SimSiam run exits 0 (got $rc; $(tail -n 1 c_ss.err))" [ "$rc" -eq 0 ]
cp ssl/s/state.safetensors ss_state
t=$(first_named ss_state '^model\..*attn\.proj\.weight$')
st_poke ssl/s/state.safetensors "$t" 7 "$NAN32"
resume_refused c_ss_model ssl/s "ssl/s/state.safetensors: tensor '$t' is not finite: element 7 (of [0-9]*) is NaN" \
  $ssl --run_name s
cp ss_state ssl/s/state.safetensors
t=$(first_named ss_state '^optim\.momentum\..*mlp\.linear1\.weight$')
st_poke ssl/s/state.safetensors "$t" 2 "$PINF32"
resume_refused c_ss_mom ssl/s "ssl/s/state.safetensors: tensor '$t' is not finite: element 2 (of [0-9]*) is +inf" \
  $ssl --run_name s
cp ss_state ssl/s/state.safetensors
st_poke ssl/s/state.safetensors train.monitor 1 "$PINF64"
resume_refused c_ss_mon ssl/s "ssl/s/state.safetensors: tensor 'train.monitor' is not finite: element 1 (of 3) is +inf" \
  $ssl --run_name s
cp ss_state ssl/s/state.safetensors
run c_ss_ok $ssl --run_name s --resume
check "c: the unpatched SimSiam state resumes and ends its epoch (got $rc; $(tail -n 1 c_ss_ok.err))" \
  [ "$rc" -eq 0 -a -s ssl/s/checkpoint.safetensors ]
# DINO: the centre, an AdamW second moment, the teacher
use "$bdir/ioupos-dino"
run c_dn $ssl --run_name d --warmup_epochs 0 --max_steps 1
check "c: a one-step DINO run exits 0 (got $rc; $(tail -n 1 c_dn.err))" [ "$rc" -eq 0 ]
cp ssl/d/state.safetensors dn_state
st_poke ssl/d/state.safetensors dino.center 11 "$PINF32"
resume_refused c_dn_center ssl/d "ssl/d/state.safetensors: tensor 'dino.center' is not finite: element 11 (of [0-9]*) is +inf" \
  $ssl --run_name d --warmup_epochs 0
cp dn_state ssl/d/state.safetensors
t=$(first_named dn_state '^optim\.exp_avg_sq\..*patch_embed')
st_poke ssl/d/state.safetensors "$t" 0 "$NAN32"
resume_refused c_dn_m2 ssl/d "ssl/d/state.safetensors: tensor '$t' is not finite: element 0 (of [0-9]*) is NaN" \
  $ssl --run_name d --warmup_epochs 0
cp dn_state ssl/d/state.safetensors
t=$(first_named dn_state '^teacher\..*norm')
st_poke ssl/d/state.safetensors "$t" 1 "$NINF32"
resume_refused c_dn_teacher ssl/d "ssl/d/state.safetensors: tensor '$t' is not finite: element 1 (of [0-9]*) is -inf" \
  $ssl --run_name d --warmup_epochs 0
cp dn_state ssl/d/state.safetensors
# fine-tuning: an AdamW first moment, the monitor; and the SSL checkpoint with a NaN as init
use "$bdir/ioupos-finetune"
run c_ft $common --run_name r --n_epochs 1 --warmup_epochs 0 --max_steps 1
check "c: a one-step fine-tuning run exits 0 (got $rc; $(tail -n 1 c_ft.err))" [ "$rc" -eq 0 ]
cp ck/r/state.safetensors ft_state
t=$(first_named ft_state '^optim\.exp_avg\..*decoder')
[ -n "$t" ] || t=$(first_named ft_state '^optim\.exp_avg\.')
st_poke ck/r/state.safetensors "$t" 4 "$NINF32"
resume_refused c_ft_m1 ck/r "ck/r/state.safetensors: tensor '$t' is not finite: element 4 (of [0-9]*) is -inf" \
  $common --run_name r --n_epochs 1 --warmup_epochs 0
cp ft_state ck/r/state.safetensors
st_poke ck/r/state.safetensors train.monitor 2 "$PINF64"
resume_refused c_ft_mon ck/r "ck/r/state.safetensors: tensor 'train.monitor' is not finite: element 2 (of 3) is +inf" \
  $common --run_name r --n_epochs 1 --warmup_epochs 0
# the SimSiam checkpoint (backbone.* and heads) with a NaN, as the fine-tuning's initialisation
cp ssl/s/checkpoint.safetensors ss_nan.safetensors
st_poke ss_nan.safetensors backbone.layers1.0.blocks.0.mlp.linear2.bias 1 "$NAN32"
ft_refused c_ft_init "^ioupos-finetune: error: ss_nan.safetensors: tensor 'backbone.layers1.0.blocks.0.mlp.linear2.bias' is not finite: element 1 (of 6) is NaN" \
  --n_epochs 0 --chkpt_path ss_nan.safetensors
cp ft_state ck/r/state.safetensors
run c_ft_ok $common --run_name r --n_epochs 1 --warmup_epochs 0 --resume
check "c: the unpatched fine-tuning state resumes (got $rc; $(tail -n 1 c_ft_ok.err))" [ "$rc" -eq 0 ]

finish
