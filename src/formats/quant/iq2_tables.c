/* IQ2_XXS lookup tables. These are facts of the ggml IQ2_XXS format; the
 * golden test checks them against tables dumped from ggml.
 *
 * The grid is written once, as 256 level codes: element t of an entry sits in
 * bits 2t..2t+1 and is a level 0..2 (magnitudes 8, 25, 43). Both the
 * magnitude table used by the kernels and the code list used by the
 * quantizer expand from that single list (an X-macro), so they cannot drift
 * apart. The sign tables follow from a rule (seven free bits plus a parity
 * bit) and are generated from it rather than listed. */
#include "formats/quant/blocks.h"
#include "formats/quant/internal.h"

#define DS4_IQ2XXS_CODES(G) \
    G(0x0000) G(0x0002) G(0x0005) G(0x0008) G(0x000a) G(0x0011) G(0x0014) G(0x0020) \
    G(0x0022) G(0x0028) G(0x002a) G(0x0041) G(0x0044) G(0x0050) G(0x0058) G(0x0061) \
    G(0x0064) G(0x0080) G(0x0082) G(0x008a) G(0x00a2) G(0x0101) G(0x0104) G(0x0110) \
    G(0x0115) G(0x0140) G(0x0184) G(0x0198) G(0x0200) G(0x0202) G(0x0222) G(0x0282) \
    G(0x0401) G(0x0404) G(0x0410) G(0x0421) G(0x0424) G(0x0440) G(0x0442) G(0x0448) \
    G(0x0460) G(0x0481) G(0x0484) G(0x0490) G(0x04a4) G(0x0500) G(0x0502) G(0x0508) \
    G(0x0520) G(0x0546) G(0x0569) G(0x0580) G(0x0591) G(0x0609) G(0x0610) G(0x0640) \
    G(0x0684) G(0x06a4) G(0x0800) G(0x0805) G(0x0808) G(0x0814) G(0x0828) G(0x0841) \
    G(0x0844) G(0x0850) G(0x0852) G(0x0888) G(0x0904) G(0x0940) G(0x0a02) G(0x0a14) \
    G(0x1001) G(0x1004) G(0x1010) G(0x1021) G(0x1040) G(0x1060) G(0x1084) G(0x1090) \
    G(0x1095) G(0x1100) G(0x1108) G(0x1120) G(0x1150) G(0x115a) G(0x1180) G(0x1224) \
    G(0x1245) G(0x1400) G(0x1408) G(0x1420) G(0x1425) G(0x1449) G(0x1480) G(0x1518) \
    G(0x1562) G(0x1600) G(0x1616) G(0x1801) G(0x1804) G(0x1810) G(0x1840) G(0x1881) \
    G(0x1900) G(0x1905) G(0x19a0) G(0x1a51) G(0x2000) G(0x2002) G(0x200a) G(0x2044) \
    G(0x2061) G(0x2080) G(0x2082) G(0x2129) G(0x2148) G(0x2200) G(0x2202) G(0x2401) \
    G(0x2404) G(0x2410) G(0x2440) G(0x2456) G(0x2500) G(0x2541) G(0x2564) G(0x2690) \
    G(0x2808) G(0x2820) G(0x2894) G(0x2a44) G(0x4001) G(0x4004) G(0x4010) G(0x4018) \
    G(0x4021) G(0x4024) G(0x4040) G(0x4048) G(0x4056) G(0x4060) G(0x4081) G(0x4084) \
    G(0x4090) G(0x4100) G(0x4120) G(0x4161) G(0x4180) G(0x4185) G(0x4201) G(0x4210) \
    G(0x4248) G(0x4256) G(0x4268) G(0x4400) G(0x4408) G(0x4420) G(0x4480) G(0x4499) \
    G(0x4512) G(0x4524) G(0x4600) G(0x4801) G(0x4804) G(0x4810) G(0x4840) G(0x4845) \
    G(0x4900) G(0x4958) G(0x4961) G(0x4982) G(0x4a45) G(0x4a90) G(0x5000) G(0x5008) \
    G(0x5011) G(0x5019) G(0x5020) G(0x5080) G(0x5088) G(0x5104) G(0x5142) G(0x51a4) \
    G(0x5291) G(0x5490) G(0x5492) G(0x550a) G(0x5601) G(0x5654) G(0x5800) G(0x5811) \
    G(0x5819) G(0x5864) G(0x5940) G(0x5a08) G(0x6004) G(0x6010) G(0x6040) G(0x6068) \
    G(0x6100) G(0x6155) G(0x6218) G(0x6260) G(0x6400) G(0x6405) G(0x6510) G(0x6512) \
    G(0x6584) G(0x6842) G(0x8000) G(0x8002) G(0x800a) G(0x8041) G(0x8082) G(0x8104) \
    G(0x8118) G(0x8140) G(0x8211) G(0x8401) G(0x8404) G(0x8410) G(0x8415) G(0x8440) \
    G(0x8460) G(0x8500) G(0x8546) G(0x8594) G(0x8609) G(0x8640) G(0x8660) G(0x8802) \
    G(0x8904) G(0x8a11) G(0x9004) G(0x9010) G(0x9024) G(0x9040) G(0x90a1) G(0x9116) \
    G(0x9180) G(0x9245) G(0x9400) G(0x9422) G(0x9444) G(0x9551) G(0x9881) G(0x9920) \
    G(0xa002) G(0xa050) G(0xa085) G(0xa109) G(0xa200) G(0xa418) G(0xa850) G(0xa904) \
    /* end */

#define LEVEL_OF(code, t) (((code) >> (2 * (t))) & 3)
#define MAG_OF(code, t)                                                       \
    (LEVEL_OF(code, t) == 0   ? DS4_IQ2XXS_LEVEL0                             \
     : LEVEL_OF(code, t) == 1 ? DS4_IQ2XXS_LEVEL1                             \
                              : DS4_IQ2XXS_LEVEL2)
#define AS_MAGS(code)                                                         \
    {MAG_OF(code, 0), MAG_OF(code, 1), MAG_OF(code, 2), MAG_OF(code, 3),      \
     MAG_OF(code, 4), MAG_OF(code, 5), MAG_OF(code, 6), MAG_OF(code, 7)},
#define AS_CODE(code) code,

_Alignas(64) const uint8_t ds4_iq2xxs_grid[256][8] = {DS4_IQ2XXS_CODES(AS_MAGS)};
const uint16_t ds4_iq2xxs_codes[256] = {DS4_IQ2XXS_CODES(AS_CODE)};

/* Sign byte of 7-bit index i: the index itself plus odd-parity fill in bit 7. */
#define PARITY7(i) ((((i) >> 0) ^ ((i) >> 1) ^ ((i) >> 2) ^ ((i) >> 3) ^ ((i) >> 4) ^ ((i) >> 5) ^ ((i) >> 6)) & 1)
#define SIGN_BYTE(i) ((i) | (PARITY7(i) << 7))
#define PM(i, t) ((SIGN_BYTE(i) >> (t)) & 1 ? -1 : 1)

#define ROW8(X, i) X(i) X((i) + 1) X((i) + 2) X((i) + 3) X((i) + 4) X((i) + 5) X((i) + 6) X((i) + 7)
#define ALL128(X)                                                                           \
    ROW8(X, 0) ROW8(X, 8) ROW8(X, 16) ROW8(X, 24) ROW8(X, 32) ROW8(X, 40) ROW8(X, 48)       \
    ROW8(X, 56) ROW8(X, 64) ROW8(X, 72) ROW8(X, 80) ROW8(X, 88) ROW8(X, 96) ROW8(X, 104)    \
    ROW8(X, 112) ROW8(X, 120)

#define AS_SIGN(i) SIGN_BYTE(i),
#define AS_PM1(i) {PM(i, 0), PM(i, 1), PM(i, 2), PM(i, 3), PM(i, 4), PM(i, 5), PM(i, 6), PM(i, 7)},

const uint8_t ds4_iq2_signs[128] = {ALL128(AS_SIGN)};
_Alignas(64) const int8_t ds4_iq2_sign_pm1[128][8] = {ALL128(AS_PM1)};
