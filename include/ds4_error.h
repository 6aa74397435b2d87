/* The error value shared by the engine API and its internals. */
#ifndef DS4_ERROR_H
#define DS4_ERROR_H

typedef struct ds4_error {
    char msg[1024];
} ds4_error;

#endif
