/* ioupos-simsiam — SimSiam pretraining of a Swin encoder on IoU-constrained crop pairs of CT
   slices, with the research code's flags (main_simsiam.py) and the published runs' defaults.

   The run itself (loader, model, optimiser, run directory, metrics, checkpoints, exact resume)
   is ioupos_pretrain_run (ioupos.h section 18); this program parses and records the flags
   (drivers/pretrain.h). Run with --help for the flags. */
#include "ioupos.h"

#define PROG "ioupos-simsiam"
#define PRETRAIN_DINO 0 /* SimSiam; a plain number: pretrain.h tests it with #if */
#include "pretrain.h"

int main(int argc, char **argv) { return pretrain_main(argc, argv); }
