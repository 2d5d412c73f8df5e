#include "textflag.h"

// func prefetch(p *int)
TEXT ·prefetch(SB), NOSPLIT, $0-8
	MOVQ	p+0(FP), AX
	PREFETCHT0	(AX)
	PREFETCHT0	63(AX)
	PREFETCHT0	126(AX)
	RET
