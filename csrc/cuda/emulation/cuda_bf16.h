// CPU stand-in for <cuda_bf16.h> (emulation build only): see cuda_fp16.h, which defines both.
#pragma once
#include "cuda_fp16.h"
