# awk -f scripts/dsc_columns.awk A.txt B.txt: the DSC column of two ioupos-finetune tables
# (stdout: "  id  organ ... DSC ..." rows and "mean over organs"), joined on the organ id, side
# by side (scripts/demo.sh and demo3d.sh: from the SimSiam encoder, from scratch).
FNR == 1 { f++ }
/^ *[0-9]+  / { id = $1; name = $2; for (i = 3; i <= NF - 4; ++i) name = name " " $i
                names[id] = name; dsc[f, id] = $(NF - 3); if (id > max) max = id }
/mean over organs/ { mean[f] = $4 }
END { printf "   %3s  %-20s %10s %10s\n", "id", "organ", "SimSiam", "scratch"
      for (id = 1; id <= max; ++id)
        printf "   %3d  %-20s %10s %10s\n", id, names[id], dsc[1, id], dsc[2, id]
      printf "        %-20s %10s %10s\n", "mean over organs", mean[1], mean[2] }
