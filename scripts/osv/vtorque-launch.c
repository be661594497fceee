/*
 * vtorque-launch.so: the vtorque launcher inside OSv images (contract: docs/osv.md).
 *
 *   /usr/lib/vtorque-launch.so <token> <program> [<arg>...]
 *
 * Runs <program> as its own OSv application (its own main thread, see vtorque-app.cc),
 * sends its stdout and stderr into numbered chunk files under /tmp/vtorque-<token>/
 * (stdout.<n>, stderr.<n>, 65536 bytes each but the last, created on their first byte),
 * and once the program has returned and both streams are drained and closed, writes
 * "vtorque-exit <token> <status>\n" to status.tmp and renames it to status. The same
 * line goes to the console. Status 127: the program could not be loaded; 125: a
 * malformed call (no file is written then).
 *
 * With VTORQUE_ISA_DEBUG_EXIT set in the guest's environment (for unattended runs from
 * the boot command line, e.g. --env=VTORQUE_ISA_DEBUG_EXIT=1), the launcher then writes
 * the status's low byte to I/O port 0xf4: QEMU's isa-debug-exit device (iobase 0xf4)
 * exits with (status << 1) | 1. OSv applications run in ring 0, so outb is allowed.
 * Never set it on a guest whose status the host reads over the REST API: QEMU exits at
 * once.
 *
 * OSv has one process: fds 1 and 2 are global, so while a job runs, anything else in the
 * guest that writes to them (the REST server, say) lands in the job's output too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_BYTES 65536
#define STATUS_USAGE 125
#define STATUS_NOT_LOADED 127
#define DEBUG_EXIT_PORT 0xf4
/* After the program ended: how long a stream may stay silent before it is taken as
 * closed even without EOF (a copy of the pipe's write end left open by the program). */
#define DRAIN_IDLE_MS 2000

/* vtorque-app.cc: runs argv[0] as an OSv application and waits for it. */
int vtorque_run_app(int argc, char *const argv[], int *status, char *error, size_t size);

struct stream {
    const char *name;       /* "stdout" or "stderr" */
    char prefix[128];       /* /tmp/vtorque-<token>/<name>. */
    int read_fd;
    int chunk_fd;           /* the open chunk, -1 when none */
    unsigned index;         /* number of the open (or next) chunk */
    size_t used;            /* bytes in the open chunk */
    int failed;             /* a chunk could not be written: the rest is dropped */
    pthread_t thread;
};

static volatile int program_done;

static void console(int fd, const char *format, ...)
{
    char line[512];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    ssize_t ignored = write(fd, line, n);
    (void)ignored;
}

static int token_ok(const char *token)
{
    if (strlen(token) != 32)
        return 0;
    for (const char *c = token; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return 0;
    return 1;
}

static int write_all(int fd, const char *data, size_t size)
{
    while (size) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        size -= n;
    }
    return 0;
}

/* Appends data to the stream's chunks: a chunk file is created on its first byte and
 * closed when full, before the next one is created. */
static void chunk_write(struct stream *s, const char *data, size_t size)
{
    while (size && !s->failed) {
        if (s->chunk_fd < 0) {
            char path[160];
            snprintf(path, sizeof path, "%s%u", s->prefix, s->index);
            s->chunk_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (s->chunk_fd < 0) {
                s->failed = 1;
                return;
            }
            s->used = 0;
        }
        size_t piece = CHUNK_BYTES - s->used;
        if (piece > size)
            piece = size;
        if (write_all(s->chunk_fd, data, piece) < 0) {
            s->failed = 1;
            return;
        }
        s->used += piece;
        data += piece;
        size -= piece;
        if (s->used == CHUNK_BYTES) {
            close(s->chunk_fd);
            s->chunk_fd = -1;
            s->index++;
            s->used = 0;
        }
    }
}

static void chunk_close(struct stream *s)
{
    if (s->chunk_fd >= 0) {
        close(s->chunk_fd);
        s->chunk_fd = -1;
    }
}

/* Copies one pipe into its chunks, each piece as soon as it is read, until EOF (or,
 * once the program has ended, until the pipe has been silent for DRAIN_IDLE_MS). */
static void *copier(void *arg)
{
    struct stream *s = arg;
    char buffer[16384];
    int idle_ms = 0;
    for (;;) {
        struct pollfd p = { .fd = s->read_fd, .events = POLLIN };
        int ready = poll(&p, 1, 100);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            break;
        if (ready == 0) {
            if (program_done) {
                idle_ms += 100;
                if (idle_ms >= DRAIN_IDLE_MS)
                    break;
            }
            continue;
        }
        ssize_t n = read(s->read_fd, buffer, sizeof buffer);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;                                  /* EOF: every write end is closed */
        idle_ms = 0;
        chunk_write(s, buffer, n);
    }
    chunk_close(s);
    return NULL;
}

static int start_stream(struct stream *s, const char *dir, const char *name, int target)
{
    int fds[2];
    s->name = name;
    snprintf(s->prefix, sizeof s->prefix, "%s/%s.", dir, name);
    s->chunk_fd = -1;
    s->index = 0;
    s->used = 0;
    s->failed = 0;
    if (pipe(fds) < 0)
        return -1;
    s->read_fd = fds[0];
    if (dup2(fds[1], target) < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    close(fds[1]);
    if (pthread_create(&s->thread, NULL, copier, s) != 0)
        return -1;
    return 0;
}

static void write_status(const char *dir, const char *line)
{
    char tmp[160], final[160];
    snprintf(tmp, sizeof tmp, "%s/status.tmp", dir);
    snprintf(final, sizeof final, "%s/status", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        console(2, "vtorque-launch: cannot write %s: %s\n", tmp, strerror(errno));
        return;
    }
    size_t size = strlen(line);
    ssize_t n = write(fd, line, size);          /* one write: never a partial line */
    int failed = n != (ssize_t)size;
    if (close(fd) < 0)
        failed = 1;
    if (failed || rename(tmp, final) < 0)
        console(2, "vtorque-launch: cannot write %s: %s\n", final, strerror(errno));
}

static void debug_exit(int status)
{
    uint8_t code = (uint8_t)status;
    uint16_t port = DEBUG_EXIT_PORT;
    __asm__ __volatile__("outb %0, %1" : : "a"(code), "Nd"(port));
}

int main(int argc, char **argv)
{
    if (argc < 3 || !token_ok(argv[1]) || !argv[2][0]) {
        console(2, "vtorque-launch: usage: vtorque-launch.so <token> <program> [<arg>...]"
                   " (<token>: 32 lowercase hexadecimal digits)\n");
        return STATUS_USAGE;
    }
    const char *token = argv[1];
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/vtorque-%s", token);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        console(2, "vtorque-launch: cannot create %s: %s\n", dir, strerror(errno));
        return STATUS_USAGE;
    }

    fflush(stdout);
    fflush(stderr);
    int console_out = dup(1), console_err = dup(2);
    if (console_out < 0 || console_err < 0) {
        console(2, "vtorque-launch: dup: %s\n", strerror(errno));
        return STATUS_USAGE;
    }
    struct stream out, err;
    program_done = 0;
    if (start_stream(&out, dir, "stdout", 1) < 0 || start_stream(&err, dir, "stderr", 2) < 0) {
        dup2(console_out, 1);
        dup2(console_err, 2);
        console(2, "vtorque-launch: cannot capture the output: %s\n", strerror(errno));
        return STATUS_USAGE;
    }
    /* A pipe makes stdio block-buffered: line-buffered output reaches the host while the
     * program runs. OSv's stdio is shared, so this holds for the program too. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    int status = 0;
    char error[256] = "";
    if (vtorque_run_app(argc - 2, argv + 2, &status, error, sizeof error) < 0) {
        char message[400];
        int n = snprintf(message, sizeof message, "vtorque-launch: %s: %s\n", argv[2], error);
        write_all(2, message, n < (int)sizeof message ? (size_t)n : sizeof message - 1);
        status = STATUS_NOT_LOADED;
    }

    fflush(stdout);
    fflush(stderr);
    program_done = 1;
    dup2(console_out, 1);               /* closes the last write ends of the pipes: EOF */
    dup2(console_err, 2);
    close(console_out);
    close(console_err);
    pthread_join(out.thread, NULL);
    pthread_join(err.thread, NULL);
    close(out.read_fd);
    close(err.read_fd);

    char line[80];
    snprintf(line, sizeof line, "vtorque-exit %s %d\n", token, status);
    write_status(dir, line);
    if (out.failed || err.failed)
        console(2, "vtorque-launch: some output was lost (a chunk could not be written)\n");
    console(1, "%s", line);
    if (getenv("VTORQUE_ISA_DEBUG_EXIT"))
        debug_exit(status);
    return status;
}
