#!/usr/bin/env bash
# Does a new student, alone or averaged with its teacher, replace the bundled model? The figures the replacement
# rule reads (issue 20; session notes), measured on copies in a scratch folder: nothing the package ships changes.
#
#   bash benchmarks/bundled_candidate.sh TEACHER STUDENT [OUT]
#
# TEACHER: the model file that taught the student (e.g. `ferkit ensemble fer2013_resnet18 --member 0 --out
# teacher.safetensors`); STUDENT: the student's finished run folder (its best.pth) or model file; OUT: the scratch
# folder (default runs/candidate_<student's name>). Each candidate, calibrated on PublicTest as the shipped file is:
#   - PublicTest accuracy (the selection split; the rule's FER2013 figure),
#   - webfaces-dev as `ferkit predict` reads it: the detected face, everyday photos' class mix,
#   - the framing swing: whole photos at 85%, 100% and 115%, the mean over the five classes of each one's largest
#     change of recall (benchmarks/results/framing_robustness_<student's name>_{student,pair}_photos.json), and its
#     difference from the shipped model's on the same photos with a paired 95% interval (SHIPPED_FRAMING names that
#     model's framing_robustness result; default bundled_photos, from `framing_robustness.py --name bundled_photos
#     --prior photos`).
# Each candidate is read beside the shipped model on the same images (`ferkit evaluate --against`): the difference in
# PublicTest and webfaces-dev accuracy and macro recall with paired 95% intervals, which say whether a gap of a few
# images is a gap at all. The replacement rule (issue 20, from the twenty-seventh session on) reads those intervals: a
# candidate replaces the shipped model when PublicTest is not worse beyond noise (the interval's upper end >= 0),
# real photos through the detector are better (the interval of accuracy or of macro recall above 0) and the framing
# swing is not worse beyond noise (its interval's lower end <= 0). A margin of a few FER2013 images should not decide
# between models that differ by points on thousands of real photos.
# The rule's figures also go to benchmarks/results/bundled_candidate_<name>.json. PrivateTest and CK+48 are left to
# the benchmarks that follow a decision (make_bundled.sh), so they cannot sway it.
# Environment: DATA (default ../shared/data, holding fer2013 and webfaces-dev), SHIPPED_FRAMING (above), SHIPPED (the
# model compared with, default the bundled fer2013_resnet18), WEIGHTS (the pair's shares, teacher's first, as
# `ferkit ensemble --weights` takes them; default alike).
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=$1
STUDENT=$2
NAME=$(basename "$STUDENT")
if [[ -d "$STUDENT" ]]; then
    STUDENT="$STUDENT/best.pth"
else
    NAME=${NAME%.*}
fi
OUT=${3:-runs/candidate_$NAME}
DATA=${DATA:-../shared/data}
SHIPPED_FRAMING=${SHIPPED_FRAMING:-bundled_photos}
SHIPPED=${SHIPPED:-fer2013_resnet18}
mkdir -p "$OUT"

cp "$STUDENT" "$OUT/student.${STUDENT##*.}"
ferkit ensemble "$TEACHER" "$STUDENT" ${WEIGHTS:+--weights $WEIGHTS} --out "$OUT/pair.safetensors"
for file in "$OUT/student.${STUDENT##*.}" "$OUT/pair.safetensors"; do
    name=$(basename "${file%.*}")
    ferkit calibrate "$file" --data "$DATA/fer2013" --workers 2
    ferkit evaluate "$file" --data "$DATA/fer2013" --split select --against "$SHIPPED" --json \
        > "$OUT/${name}_publictest.json"
    ferkit evaluate "$file" --data "$DATA/webfaces-dev" --faces detected --prior photos --min-support 50 \
        --against "$SHIPPED" --json > "$OUT/${name}_webfaces_detected_photos.json"
    python benchmarks/framing_robustness.py --checkpoint "$file" --name "${NAME}_${name}_photos" --prior photos \
        --data "$DATA/webfaces-dev" --paired-with "$SHIPPED_FRAMING"
    cp "benchmarks/results/framing_robustness_${NAME}_${name}_photos.json" "$OUT/${name}_framing.json"
done

python - "$OUT" "$NAME" "$TEACHER" <<'EOF'
import json
import sys
from pathlib import Path

out, name, teacher = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
summary = {"student": name, "teacher": teacher, "candidates": {}}
print(
    f"{'candidate':<10} {'PublicTest':>10} {'webfaces-dev detected, photos: acc / macro recall':>52} "
    f"{'framing swing':>14} {'minus shipped (paired 95%)':>30}"
)
for candidate in ("student", "pair"):
    public = json.loads((out / f"{candidate}_publictest.json").read_text())
    photos = json.loads((out / f"{candidate}_webfaces_detected_photos.json").read_text())
    framing = json.loads((out / f"{candidate}_framing.json").read_text())
    changes = framing["largest_recall_change"]
    swing = sum(changes.values()) / len(changes)
    summary["candidates"][candidate] = {
        "publictest": public["accuracy"],
        "temperature": public["temperature"],
        "webfaces_detected_photos": {k: photos[k] for k in ("accuracy", "macro_recall", "ece")},
        "framing_largest_recall_change": changes,
        "framing_swing": swing,
        "framing_swing_95": framing["mean_largest_change_95"],  # over the photos, bootstrap
        "framing_swing_minus_shipped": framing["paired_with"],  # the same photos and draws for both
    }
    paired = framing["paired_with"]
    lo, hi = paired["difference_95"]
    print(
        f"{candidate:<10} {public['accuracy']:>10.2%} {photos['accuracy']:>43.2%} / {photos['macro_recall']:.3f} "
        f"{swing:>14.3f} {paired['difference']:>+12.3f} ({lo:+.3f} to {hi:+.3f})"
    )
    for figure, result in (("publictest", public), ("webfaces_detected_photos", photos)):
        d = result["against"]["difference"]
        summary["candidates"][candidate][f"{figure}_minus_shipped"] = d
        print(
            f"  minus shipped, {figure}: accuracy {d['accuracy']:+.2%} ({d['accuracy_95'][0]:+.2%} to "
            f"{d['accuracy_95'][1]:+.2%}), macro recall {d['macro_recall']:+.3f} ({d['macro_recall_95'][0]:+.3f} "
            f"to {d['macro_recall_95'][1]:+.3f}), paired 95%"
        )
    on_fer, on_photos = public["against"]["difference"], photos["against"]["difference"]
    failed = [
        reason
        for reason, holds in (
            ("PublicTest worse beyond noise", on_fer["accuracy_95"][1] >= 0),
            ("real photos not better", on_photos["accuracy_95"][0] > 0 or on_photos["macro_recall_95"][0] > 0),
            ("framing swing worse beyond noise", lo <= 0),
        )
        if not holds
    ]
    summary["candidates"][candidate]["rule"] = {"replaces_shipped": not failed, "fails": failed}
    print(f"  rule: {'replaces the shipped model' if not failed else 'does not replace it: ' + '; '.join(failed)}")
path = Path("benchmarks/results") / f"bundled_candidate_{name}.json"
path.write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {path}")
EOF
