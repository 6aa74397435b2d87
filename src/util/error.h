/* Error reporting: functions return 0 on success, -1 on failure and fill a
 * ds4_error with a message that names the file, tensor or field at fault.
 * Only tools decide to print and exit. */
#ifndef DS4_UTIL_ERROR_H
#define DS4_UTIL_ERROR_H

#include <stddef.h>

#include "ds4_error.h"

#endif
