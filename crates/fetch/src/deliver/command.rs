//! The command (MDA) destination: the message goes to the standard input
//! of `/bin/sh -c command`; exit status 0 means delivered.

use std::io::{self, BufWriter};
use std::process::{Child, ChildStdin, Command, Stdio};

use super::transcode::CrlfToLf;
use super::{BUF, Delivery};

write_through_writer!(CommandDelivery);

/// Delivery to a command's standard input; exit status 0 means delivered.
pub(crate) struct CommandDelivery {
    child: Option<Child>,
    writer: Option<CrlfToLf<BufWriter<ChildStdin>>>,
    command: String,
}

impl CommandDelivery {
    /// Start `/bin/sh -c command`. Its standard output goes to our
    /// standard error, so that standard output stays for summaries.
    pub(crate) fn begin(command: &str) -> io::Result<Self> {
        let stdout = match io::stderr().as_fd_clone() {
            Some(fd) => Stdio::from(fd),
            None => Stdio::null(),
        };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {command:?}: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin pipe"))?;
        Ok(CommandDelivery {
            child: Some(child),
            writer: Some(CrlfToLf::new(BufWriter::with_capacity(BUF, stdin))),
            command: command.to_string(),
        })
    }

    fn reap(&mut self, kill: bool) -> io::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("already reaped"))?;
        if kill {
            let _ = child.kill();
        }
        child.wait()
    }
}

trait AsFdClone {
    fn as_fd_clone(&self) -> Option<std::os::fd::OwnedFd>;
}

impl AsFdClone for io::Stderr {
    fn as_fd_clone(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned().ok()
    }
}

impl Delivery for CommandDelivery {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        let written = w
            .finish()
            .and_then(|bw| bw.into_inner().map_err(|e| e.into_error()));
        // Closing stdin (dropping it) lets the command see end of input.
        let write_error = written.err();
        let status = self.reap(false)?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "{:?} failed ({status})",
                self.command
            )));
        }
        match write_error {
            // The command succeeded without reading everything: not a
            // complete delivery.
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!("{:?} did not read the whole message: {e}", self.command),
            )),
            None => Ok(()),
        }
    }

    fn abort(mut self: Box<Self>) {
        self.writer.take();
        let _ = self.reap(true);
    }
}

impl Drop for CommandDelivery {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.writer.take();
            let _ = self.reap(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn command_exit_status_decides() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut d =
            Box::new(CommandDelivery::begin(&format!("cat > '{}'", out.display())).unwrap());
        d.write_all(b"x\r\ny\r\n").unwrap();
        d.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"x\ny\n");
        let mut d = Box::new(CommandDelivery::begin("cat >/dev/null; exit 3").unwrap());
        d.write_all(b"x\r\n").unwrap();
        assert!(
            d.commit()
                .unwrap_err()
                .to_string()
                .contains("exit status: 3")
        );
    }
}
