"""Version and description of the metric implementation, stored next to every number.

Bump METRIC_VERSION whenever a stored number could change. History:
- AUPIMO was added under 1.1.0 without a bump on purpose: no stored number changes, and a bump
  marks every stored run stale (the next sweep runs it again); runs stored before it show no AUPIMO.
- 1.1.0: LOCO sPRO saturation area rounded down as the official evaluation v2.0 does
  (S = int(threshold * area) for relative thresholds); AUC-sPRO of 1.0.0 results differs for any
  defect whose relative threshold times its area is not an integer. Other metrics unchanged.
- 1.0.0: first release.
"""

METRIC_VERSION = "1.1.0"

METRIC_IMPLEMENTATION = (
    "harness.metrics 1.1.0: exact threshold sweeps over all distinct scores from integer histograms "
    "keyed by float32 bit pattern (float64 maps are rounded to float32; image scores use float64). "
    "Exact (to float64 rounding, weights to 2^-32) whenever a class holds <= max_bins distinct "
    "scores (always for float16 maps); beyond that adjacent float32 scores share a bin and each "
    "value's note carries a proven error bound. AUROC trapezoid; AP step sum as scikit-learn; "
    "F1-max over all thresholds; AUPRO: 8-connected GT components, FPR over normal pixels, "
    "trapezoid to the limit with linear interpolation, divided by the limit (0.3, 0.05, 0.01); "
    "LOCO AUC-sPRO: one region per mask channel, saturation from defects_config (relative: "
    "max(floor(threshold * area), 1); absolute: min(threshold, area)), FPR over pixels "
    "defect-free in every channel, limits 0.01/0.05/0.1/0.3/1.0, structural and logical each with "
    "good images, and their mean. AUPIMO: per anomalous image, TPR over ln(mean per-normal-image FPR) "
    "between the thresholds closest to 1e-5 and 1e-4, every distinct normal-range score a "
    "threshold, divided by ln 10; class value the mean over its anomalous images."
)
