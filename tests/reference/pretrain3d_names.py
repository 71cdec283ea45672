"""Write tests/fixtures/pretrain3d/swin3d_c12_names.txt: every entry of the state dict of the 3D
MONAI SwinTransformer that tests/test_pretrain3d.sh trains (ioupos-simsiam / ioupos-dino
--spatial_dims 3 --embedding_size 12: the commands' fixed patch 2, window 7, depths 2,2,2,2,
heads 3,6,12,24), one "name dtype shape" line each (dtype as safetensors writes it: F32, I64;
shape comma-separated), sorted by name in byte order. The test compares the backbone.* tensors
of the runs' checkpoints with it, so a checkpoint must be loadable by
SwinTransformer.load_state_dict(strict=True): same names, same shapes, same dtypes.

Run from the repository root:  .venv/bin/python tests/reference/pretrain3d_names.py
Versions: tests/reference/requirements.txt (monai 1.6.1). Re-running gives the same file.
"""
import os

from monai.networks.nets.swin_unetr import SwinTransformer

OUT = os.path.join("tests", "fixtures", "pretrain3d", "swin3d_c12_names.txt")
DTYPES = {"torch.float32": "F32", "torch.int64": "I64"}


def main():
    m = SwinTransformer(in_chans=1, embed_dim=12, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                        depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), mlp_ratio=4.0,
                        qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                        patch_norm=False, use_checkpoint=False, spatial_dims=3,
                        downsample="merging", use_v2=False)
    lines = sorted(f"{k} {DTYPES[str(v.dtype)]} {','.join(str(d) for d in v.shape)}"
                   for k, v in m.state_dict().items())
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {OUT}: {len(lines)} tensors")


if __name__ == "__main__":
    main()
