/*
 * vtorque-test: a plain Linux program (a glibc PIE, built with the host's gcc and nothing
 * OSv-specific) that vtorque's OSv image carries at /usr/bin/vtorque-test for tests.
 *
 * It carries out its arguments in order:
 *
 *   args              print "argc=N" and then "argv[i]=<word>" for every argument
 *   env NAME          print "NAME=<value>" or "NAME is unset"
 *   out TEXT          print TEXT and a newline on stdout
 *   err TEXT          print TEXT and a newline on stderr
 *   write PATH TEXT   write TEXT and a newline to the file PATH, then print "wrote PATH"
 *   cat PATH          copy the file PATH to stdout
 *   bytes N           print exactly N bytes on stdout: lines "vtorque-test line %09d\n"
 *                     (28 bytes each), the last one cut short
 *   sleep SECONDS     sleep (fractions allowed)
 *   status N          return N from main() (ends the program; default status 0)
 *   exit N            call exit(N) (on OSv this powers the whole guest off)
 *   abort             call abort()
 *
 * Unknown words are an error: a message on stderr and status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int need(int i, int argc, int count, const char *op)
{
    if (i + count >= argc) {
        fprintf(stderr, "vtorque-test: %s needs %d argument(s)\n", op, count);
        return 0;
    }
    return 1;
}

static void print_bytes(long long total)
{
    char line[32];
    long long k = 0;
    while (total > 0) {
        int n = snprintf(line, sizeof line, "vtorque-test line %09lld\n", k++);
        if (n > total)
            n = (int)total;
        fwrite(line, 1, n, stdout);
        total -= n;
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        if (!strcmp(op, "args")) {
            printf("argc=%d\n", argc);
            for (int k = 0; k < argc; k++)
                printf("argv[%d]=%s\n", k, argv[k]);
        } else if (!strcmp(op, "env")) {
            if (!need(i, argc, 1, op))
                return 2;
            const char *value = getenv(argv[++i]);
            if (value)
                printf("%s=%s\n", argv[i], value);
            else
                printf("%s is unset\n", argv[i]);
        } else if (!strcmp(op, "out")) {
            if (!need(i, argc, 1, op))
                return 2;
            printf("%s\n", argv[++i]);
        } else if (!strcmp(op, "err")) {
            if (!need(i, argc, 1, op))
                return 2;
            fprintf(stderr, "%s\n", argv[++i]);
        } else if (!strcmp(op, "write")) {
            if (!need(i, argc, 2, op))
                return 2;
            const char *path = argv[++i], *text = argv[++i];
            FILE *f = fopen(path, "w");
            if (!f || fprintf(f, "%s\n", text) < 0 || fclose(f) != 0) {
                fprintf(stderr, "vtorque-test: cannot write %s: %s\n", path, strerror(errno));
                return 1;
            }
            printf("wrote %s\n", path);
        } else if (!strcmp(op, "cat")) {
            if (!need(i, argc, 1, op))
                return 2;
            FILE *f = fopen(argv[++i], "r");
            if (!f) {
                fprintf(stderr, "vtorque-test: cannot read %s: %s\n", argv[i], strerror(errno));
                return 1;
            }
            char buffer[4096];
            size_t n;
            while ((n = fread(buffer, 1, sizeof buffer, f)) > 0)
                fwrite(buffer, 1, n, stdout);
            fclose(f);
        } else if (!strcmp(op, "bytes")) {
            if (!need(i, argc, 1, op))
                return 2;
            print_bytes(atoll(argv[++i]));
        } else if (!strcmp(op, "sleep")) {
            if (!need(i, argc, 1, op))
                return 2;
            double seconds = atof(argv[++i]);
            struct timespec t = { (time_t)seconds,
                                  (long)((seconds - (time_t)seconds) * 1e9) };
            while (nanosleep(&t, &t) < 0 && errno == EINTR)
                ;
        } else if (!strcmp(op, "status")) {
            if (!need(i, argc, 1, op))
                return 2;
            return atoi(argv[++i]);
        } else if (!strcmp(op, "exit")) {
            if (!need(i, argc, 1, op))
                return 2;
            fflush(NULL);
            exit(atoi(argv[++i]));
        } else if (!strcmp(op, "abort")) {
            fflush(NULL);
            abort();
        } else {
            fprintf(stderr, "vtorque-test: unknown operation %s\n", op);
            return 2;
        }
    }
    return 0;
}
