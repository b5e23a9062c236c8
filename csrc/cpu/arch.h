// The one switch for x86-only constructs in the CPU engine. Every use of cpuid-style feature
// tests (__builtin_cpu_supports), <immintrin.h> intrinsics or target_clones with x86 arch names
// sits behind LAYERKNN_X86, so the engine also builds on other architectures (aarch64, ...)
// with the portable scalar kernel table alone; .ci/cross_aarch64.sh checks that it does.
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAYERKNN_X86 1
// Function multi-versioning for small hot loops: AVX-512, AVX2 and baseline clones.
#define LAYERKNN_X86_CLONES __attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#else
#define LAYERKNN_X86 0
#define LAYERKNN_X86_CLONES
#endif
