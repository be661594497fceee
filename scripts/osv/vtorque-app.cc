/*
 * The one piece of the vtorque launcher that needs OSv's C++ API: run a program as its
 * own OSv application and wait for it.
 *
 * osv::application::run_exit_ends_app() (added by scripts/patches/osv/0002-*) gives the
 * program a new main thread, as osv::application::run() does, and makes exit() in that
 * thread end the program with that status instead of powering the guest off; join()
 * waits until the program and all its threads are done and returns the status. OSv's
 * C wrappers (osv_run_app(), osv_execve()) run the program in the calling thread instead
 * (run_and_join): a glibc PIE that does not export main() ends through OSv's
 * __libc_start_main(), which calls pthread_exit() and so would end that calling thread
 * too, before any status is known. The program shares the launcher's ELF namespace
 * (as PUT /app/ does by default): OSv has at most 32 namespaces and never reuses one,
 * which would limit a guest's lifetime to 31 runs.
 */
#include <osv/app.hh>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

extern "C" __attribute__((visibility("hidden")))
int vtorque_run_app(int argc, char *const argv[], int *status, char *error, size_t size)
{
    try {
        std::vector<std::string> args(argv, argv + argc);
        auto app = osv::application::run_exit_ends_app(args[0], args);
        *status = app->join();
        return 0;
    } catch (const osv::launch_error &e) {
        snprintf(error, size, "%s", e.what());
    } catch (const std::exception &e) {
        snprintf(error, size, "cannot run it: %s", e.what());
    } catch (...) {
        snprintf(error, size, "cannot run it");
    }
    return -1;
}
