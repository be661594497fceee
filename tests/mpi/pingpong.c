/* Ping-pong between rank 0 and rank 1: round-trip latency for 8 bytes and bandwidth for
 * 1 MiB messages, each the median-free mean over a fixed count (bounded in count).
 * Usage: pingpong [iterations]; prints one line rank 0 can be parsed from. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double run(int rank, char *buf, int bytes, int iters) {
    MPI_Status st;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, &st);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, &st);
            MPI_Send(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - t0;
}

int main(int argc, char **argv) {
    int rank, size, len, iters = argc > 1 ? atoi(argv[1]) : 50;
    const int big = 1 << 20;
    char host[MPI_MAX_PROCESSOR_NAME], peer[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        fprintf(stderr, "pingpong needs 2 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    MPI_Get_processor_name(host, &len);
    if (rank == 1) MPI_Send(host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
    if (rank == 0) MPI_Recv(peer, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 1, 1, MPI_COMM_WORLD,
                            MPI_STATUS_IGNORE);
    char *buf = calloc(1, big);
    run(rank, buf, 8, 5);                       /* warm up */
    double lat = run(rank, buf, 8, iters) / iters / 2 * 1e6;
    double bw_t = run(rank, buf, big, iters / 5 + 1);
    double bw = (double)big * 2 * (iters / 5 + 1) / bw_t / 1e6;
    if (rank == 0)
        printf("pingpong from=%s to=%s latency_us=%.1f bandwidth_MBps=%.1f\n",
               host, peer, lat, bw);
    free(buf);
    MPI_Finalize();
    return 0;
}
