/* libthinstack: virtual block devices in user space out of stacked layers
 * (thin pool and volumes, snapshot, crypt, linear, file, kernel passthrough)
 * behind one request API: read, write, flush, discard, write-zeroes and
 * provision.
 *
 * This umbrella header is the one to include (it brings the synchronous API
 * of io.h, thin pool management of thin.h, the offline metadata and log
 * tools of tools.h, the asynchronous API of async.h and the control socket
 * of ctl.h, the vhost-user-blk server of vhost.h). Layer authors also include
 * <libthinstack/layer.h>.
 */
#ifndef LIBTHINSTACK_THINSTACK_H
#define LIBTHINSTACK_THINSTACK_H

#include <libthinstack/version.h>
#include <libthinstack/io.h>
#include <libthinstack/thin.h>
#include <libthinstack/tools.h>
#include <libthinstack/async.h>
#include <libthinstack/ctl.h>
#include <libthinstack/vhost.h>

#endif
