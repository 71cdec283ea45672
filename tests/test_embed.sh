#!/bin/sh
# tests/test_embed.sh — command-line checks for build/ioupos-embed against MONAI.
# Usage: sh tests/test_embed.sh BUILD_DIR   (run by tests/run.sh from the repository root)
# Fixtures: tests/fixtures/embed/ (tests/reference/embed_fixture.py: PNGs / NIfTI volumes and
# MONAI 1.6.1's features of them with tests/fixtures/model/swin{2d,3d}_weights.safetensors).
# Helpers (Makefile TEST_HELPERS): BUILD_DIR/npy_compare, BUILD_DIR/st_rename.
# Prints "FAIL: ..." for each failed check, then "test_embed: N checks passed, M failed";
# exits 1 if any check failed.

root=$(cd "$(dirname "$0")/.." && pwd)
me=test_embed prog=ioupos-embed
. "$(dirname "$0")/cli_lib.sh"

fix=$root/tests/fixtures/embed
w2=$root/tests/fixtures/model/swin2d_weights.safetensors
w3=$root/tests/fixtures/model/swin3d_weights.safetensors
helpers=$(dirname "$bin")
for h in npy_compare st_rename; do
  if [ ! -x "$helpers/$h" ]; then
    echo "FAIL: $helpers/$h not found (run: make $helpers/$h)"
    echo "$me: 0 checks passed, 1 failed"
    exit 1
  fi
done

# Tolerance against MONAI: |got - expected| <= 1e-4 + 1e-4 |expected|. ioupos computes in
# float32, the reference in float64 (model.double()), through ~20 layers (patch embedding, 8
# blocks of layer norm + window attention + MLP, 4 patch mergings, the final layer norm and the
# mean). Measured worst errors: 9.5e-7 (2D) and 2-3e-6 (3D) on features up to 2.8 in
# magnitude, so the tolerance leaves 40x headroom while a real fault (a transposed image, a lost
# shift or mask, a wrong norm) moves features by 1e-2 and more. npy_compare prints the worst.
compare() { # compare NAME GOT EXPECTED
  "$helpers/npy_compare" "$2" "$3" 1e-4 1e-4 >"$1.cmp" 2>&1
  crc=$?
  echo "  $1: $(cat "$1.cmp")"
  check "$1: features match MONAI within 1e-4 + 1e-4 |x| ($(cat "$1.cmp"))" [ "$crc" -eq 0 ]
}

# ---- --help: exit 0, every flag and its default ----------------------------------------------
run help --help
check "--help exits 0 (got $rc)" [ "$rc" -eq 0 ]
for f in --chkpt_path --data_dir --output --spatial_dims --embedding_size --depths --num_heads \
         --window_size --patch_size --in_chans --batch_size --threads --max_memory_mb --help; do
  check "--help mentions $f" grep -q -- "$f" help.out
done
for d in "default 2)" "default 48)" "default 2,2,2,2)" "default 3,6,12,24)" "default 7)" \
         "default 1)" "default 32)"; do
  check "--help mentions '$d'" grep -q -- "$d" help.out
done

# ---- 2D: four PNGs of two shapes (40x36, 40x36, 48x52, 40x36) ----------------------------------
run a --chkpt_path "$w2" --data_dir "$fix/png" --output a.npy --embedding_size 6
check "2D run exits 0 (got $rc; $(cat a.err))" [ "$rc" -eq 0 ]
check "2D run says what it loaded" \
  grep -q "loaded 126 tensors from $w2 (prefix ''; 0 other tensors ignored)" a.err
check "2D run reports what it wrote" grep -q "^wrote a.npy (4 x 96 float32) and a.files.txt$" a.out
compare a a.npy "$fix/expected.npy"
check "files.txt lists the PNGs in row (name) order" cmp -s a.files.txt "$fix/files.txt"
check ".npy starts with the format 1.0 magic" \
  [ "$(od -An -tx1 -N8 a.npy | tr -d ' \n')" = 934e554d50590100 ]
check ".npy header: <f4, C order, shape (4, 96)" \
  grep -q "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 96), }" a.npy
check ".npy is 128 header bytes + 4 x 96 float32" [ "$(wc -c <a.npy | tr -d ' ')" -eq 1664 ]

# Batching (and threads, and memory-driven splits) must not change a single bit.
run b1 --chkpt_path "$w2" --data_dir "$fix/png" --output b1.npy --embedding_size 6 --batch_size 1
check "--batch_size 1 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "--batch_size 1 gives the same bytes" cmp -s a.npy b1.npy
run b2 --chkpt_path "$w2" --data_dir "$fix/png" --output=b2.npy --embedding_size=6 --batch_size=2 \
  --threads 1
check "--batch_size 2 --threads 1 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "--batch_size 2 --threads 1 gives the same bytes" cmp -s a.npy b2.npy
# One 40x36 image needs about 2 MB of the encoder's activations (its plan keeps what a
# backward pass would need): with 1 MB the batch of the first two images is split and every
# image runs alone, with a note saying so.
run m1 --chkpt_path "$w2" --data_dir "$fix/png" --output m1.npy --embedding_size 6 --max_memory_mb 1
check "--max_memory_mb 1 exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "--max_memory_mb 1 says the batch was cut ($(cat m1.err))" \
  grep -q "of activations.*--max_memory_mb 1" m1.err
check "--max_memory_mb 1 gives the same bytes" cmp -s a.npy m1.npy

# Checkpoint layouts: a SwinUNETR state dict (swinViT.), one of ours (backbone. + heads).
"$helpers/st_rename" "$w2" vit.safetensors swinViT.
"$helpers/st_rename" "$w2" ours.safetensors backbone. projection_head.layers.0.weight
run v --chkpt_path vit.safetensors --data_dir "$fix/png" --output v.npy --embedding_size 6
check "swinViT. checkpoint exits 0 (got $rc; $(cat v.err))" [ "$rc" -eq 0 ]
check "swinViT. prefix found" grep -q "loaded 126 tensors from vit.safetensors (prefix 'swinViT.'; 0 other tensors ignored)" v.err
check "swinViT. checkpoint gives the same features" cmp -s a.npy v.npy
run o --chkpt_path ours.safetensors --data_dir "$fix/png" --output o.npy --embedding_size 6
check "backbone. checkpoint exits 0 (got $rc; $(cat o.err))" [ "$rc" -eq 0 ]
check "backbone. prefix found, the head ignored" grep -q "loaded 126 tensors from ours.safetensors (prefix 'backbone.'; 1 other tensors ignored)" o.err
check "backbone. checkpoint gives the same features" cmp -s a.npy o.npy

# An output name without .npy: the list is <output>.files.txt.
run n --chkpt_path "$w2" --data_dir "$fix/png" --output feats --embedding_size 6
check "--output without .npy exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "--output feats writes feats and feats.files.txt" cmp -s a.npy feats && [ -f feats.files.txt ]

# ---- 3D: two NIfTI volumes of two shapes, NIfTI (x, y, z) as MONAI's array order ---------------
run d3 --chkpt_path "$w3" --data_dir "$fix/vol" --output d3.npy --spatial_dims 3 \
  --embedding_size 6 --window_size 3,3,3
check "3D run exits 0 (got $rc; $(cat d3.err))" [ "$rc" -eq 0 ]
compare d3 d3.npy "$fix/expected3d.npy"
printf 'a_vol.nii.gz\nb_vol.nii\n' >d3.want
check "3D files.txt lists the volumes in name order" cmp -s d3.files.txt d3.want
run d3b --chkpt_path "$w3" --data_dir "$fix/vol" --output d3b.npy --spatial_dims 3 \
  --embedding_size 6 --window_size 3 --batch_size 1
check "3D --window_size 3 --batch_size 1 gives the same bytes" cmp -s d3.npy d3b.npy

# ---- refusals: exit status, a message naming the problem, no output at all ---------------------
# refused NAME STATUS PATTERN ARGS...: asked for NAME.npy, fails with STATUS and PATTERN on
# stderr; no NAME.npy, no NAME.files.txt, nothing on stdout.
refused() {
  name=$1; want=$2; pattern=$3; shift 3
  rm -f "$name.files.txt"
  expect_refusal "$name" "$want" "$pattern" --output "$name.npy" "$@"
  check "$name: no file list left" [ ! -e "$name.files.txt" ]
}
refused e_width 1 "patch_embed.proj.weight' has shape \[6, 1, 2, 2\], the model expects \[12, 1, 2, 2\]" \
  --chkpt_path "$w2" --data_dir "$fix/png" --embedding_size 12
check "e_width: the message names the checkpoint" grep -q "ioupos-embed: $w2: checkpoint tensor" e_width.err
refused e_window 1 "relative_position_bias_table' has shape \[169, 3\], the model expects \[81, 3\]" \
  --chkpt_path "$w2" --data_dir "$fix/png" --embedding_size 6 --window_size 5
refused e_depth 1 "checkpoint lacks tensor 'layers3.0.blocks.2.norm1.weight'" \
  --chkpt_path "$w2" --data_dir "$fix/png" --embedding_size 6 --depths 2,2,6,2
refused e_dims 1 "patch_embed.proj.weight' has shape \[6, 1, 2, 2\], the model expects \[6, 1, 2, 2, 2\]" \
  --chkpt_path "$w2" --data_dir "$fix/vol" --embedding_size 6 --spatial_dims 3
"$helpers/st_rename" "$w2" other.safetensors decoder.
refused e_noenc 1 "other.safetensors: no Swin encoder in this file" \
  --chkpt_path other.safetensors --data_dir "$fix/png" --embedding_size 6
refused e_nochk 1 "ioupos-embed: nope.safetensors: cannot open" \
  --chkpt_path nope.safetensors --data_dir "$fix/png" --embedding_size 6
refused e_notchk 1 "a_first.png: safetensors header length" \
  --chkpt_path "$fix/png/a_first.png" --data_dir "$fix/png" --embedding_size 6
mkdir empty
refused e_empty 1 "image folder empty holds no \*.png files" \
  --chkpt_path "$w2" --data_dir empty --embedding_size 6
refused e_empty3 1 "empty: no .nii or .nii.gz files" \
  --chkpt_path "$w3" --data_dir empty --embedding_size 6 --spatial_dims 3 --window_size 3
refused e_nodir 1 "image folder no_such_dir: cannot open" \
  --chkpt_path "$w2" --data_dir no_such_dir --embedding_size 6
# A corrupt PNG after two good ones (the first batch is embedded before it is read).
mkdir bad trunc
cp "$fix"/png/*.png bad/
cp "$fix"/png/*.png trunc/
echo "this is not a PNG file, just some text" >bad/c_bad.png
head -c 100 "$fix/png/c_third.png" >trunc/c_cut.png
refused e_corrupt 1 "ioupos-embed: bad/c_bad.png: not a PNG file" \
  --chkpt_path "$w2" --data_dir bad --embedding_size 6 --batch_size 1
refused e_trunc 1 "ioupos-embed: trunc/c_cut.png: corrupt.*PNG" \
  --chkpt_path "$w2" --data_dir trunc --embedding_size 6
refused e_outdir 1 "cannot write --output no_such_dir/x.npy" \
  --chkpt_path "$w2" --data_dir "$fix/png" --embedding_size 6 --output no_such_dir/x.npy
# Command-line errors: exit 2, the flag (and value) named.
refused e_flag 2 "unknown flag '--bogus'" --chkpt_path "$w2" --data_dir "$fix/png" --bogus 1
refused e_num 2 "--embedding_size: bad value 'abc'" --chkpt_path "$w2" --data_dir "$fix/png" \
  --embedding_size abc
refused e_num2 2 "--batch_size: bad value '0'" --chkpt_path "$w2" --data_dir "$fix/png" --batch_size 0
refused e_num3 2 "--depths: bad value '2,2,2'" --chkpt_path "$w2" --data_dir "$fix/png" --depths 2,2,2
refused e_num4 2 "--window_size: bad value '7,7,7'" --chkpt_path "$w2" --data_dir "$fix/png" \
  --window_size 7,7,7
refused e_num5 2 "--threads: bad value '2x'" --chkpt_path "$w2" --data_dir "$fix/png" --threads 2x
refused e_heads 2 "--num_heads: stage 1 has 4 heads, which must divide its width 6" \
  --chkpt_path "$w2" --data_dir "$fix/png" --embedding_size 6 --num_heads 4,6,12,24
refused e_missing 2 "--data_dir: missing value" --chkpt_path "$w2" --data_dir
refused e_req 2 "--chkpt_path is required" --data_dir "$fix/png"
expect_error e_req2 2 "--output is required" --chkpt_path "$w2" --data_dir "$fix/png"
refused e_pos 2 "unexpected argument 'extra'" extra

# ---- no temporary files anywhere ---------------------------------------------------------------
stray=$(find . -name '*.tmp.*' | wc -l)
check "no stray *.tmp.* files ($stray found)" [ "$stray" -eq 0 ]

finish
