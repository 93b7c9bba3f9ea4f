import time

import torch

import diffattn
from diffattn.calibrate import calibrate

torch.set_num_threads(1)
pipe = diffattn.tiny_model()
t=time.time()
plan = calibrate(pipe, call_kwargs={"height": 64, "width": 64}, target="max_attn_error=0.1", progress=False)
print(time.time()-t, dict(plan.info), plan.attention_share)
