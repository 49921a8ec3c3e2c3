"""Building blocks shared by the transformer reconstruction methods (UniAD, MoEAD, UniLEAD).

neck: multi-level feature alignment (UniAD's MFCN); position: learned 2-D position embedding;
attention: neighbour-masked attention; jitter: feature jitter; adapters: bottleneck adapters,
gated residual, squeeze-excitation, mixture of adapters; routers: routing modes and top-k
dispatch; transformer: encoder/decoder layers and the UniAD reconstruction transformer;
scoring: anomaly maps and image scores.
"""
