/* ioupos-dino — DINO pretraining of a Swin encoder on IoU-constrained crop pairs of CT slices
   (optionally with local crops), with the research code's flags (main_dino.py) and the DINO
   reference recipe; the size (C 48, batch 128, 100 epochs) is the SimSiam runs'.

   The run itself (loader, student and teacher, optimiser, run directory, metrics, checkpoints,
   exact resume) is ioupos_pretrain_run (ioupos.h section 18); this program parses and records
   the flags (drivers/pretrain.h). Run with --help for the flags. */
#include "ioupos.h"

#define PROG "ioupos-dino"
#define PRETRAIN_DINO 1 /* DINO; a plain number: pretrain.h tests it with #if */
#include "pretrain.h"

int main(int argc, char **argv) { return pretrain_main(argc, argv); }
