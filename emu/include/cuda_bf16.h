// Emulator stand-in (see README.md): everything is in emu/cuda_emu.h.
#pragma once
