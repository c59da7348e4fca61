/* Umbrella of the CCmdop module: libcmdop's C API, found through the
 * include path pkg-config gives for cmdop. */
#include <cmdop.h>
