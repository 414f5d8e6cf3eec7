# ---------------------------------------------------------------------------------------
# godwit's own permissions (the ECS task role and the Lambda function's role): only the S3
# calls, SNS calls and KMS uses godwit makes, only on this pipeline's prefix, topic and key.
# scripts/check-deploy derives the allowed actions from godwit's SDK calls and fails on any
# other action here.
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "godwit" {
  statement {
    sid = "ReadThePipelineFile"
    actions = [
      "s3:GetObject",
    ]
    resources = ["${aws_s3_bucket.this.arn}/${local.pipeline_key}"]
  }

  statement {
    sid = "DataAndStateObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${aws_s3_bucket.this.arn}/${var.target_prefix}/*"]
  }

  # ListObjectsV2 (table folders, leftovers of a crash), ListMultipartUploads (incomplete
  # uploads to abort) and HeadBucket (check); HeadBucket carries no prefix, hence IfExists.
  statement {
    sid = "ListThePrefix"
    actions = [
      "s3:ListBucket",
      "s3:ListBucketMultipartUploads",
    ]
    resources = [aws_s3_bucket.this.arn]
    condition {
      test     = "StringLikeIfExists"
      variable = "s3:prefix"
      values   = [var.target_prefix, "${var.target_prefix}/*"]
    }
  }

  statement {
    sid = "EventsToTheTopic"
    actions = [
      "sns:Publish",
      "sns:GetTopicAttributes",
    ]
    resources = [aws_sns_topic.events.arn]
  }

  # SSE-KMS objects and the encrypted topic: data keys through S3 and SNS only.
  statement {
    sid = "TheKeyThroughS3AndSNS"
    actions = [
      "kms:GenerateDataKey",
      "kms:Decrypt",
    ]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com", "sns.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "godwit" {
  name        = "${local.prefix}-godwit"
  description = "godwit ${var.name}: the S3 prefix, the SNS topic and the KMS key it uses"
  policy      = data.aws_iam_policy_document.godwit.json
  tags        = local.tags
}

# ---------------------------------------------------------------------------------------
# ECS: the task role (godwit) and the execution role (the ECS agent: image, logs, secrets).
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "task" {
  name               = "${local.prefix}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "task" {
  role       = aws_iam_role.task.name
  policy_arn = aws_iam_policy.godwit.arn
}

resource "aws_iam_role" "execution" {
  name               = "${local.prefix}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "WriteTheLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  statement {
    sid       = "InjectTheSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = concat([aws_secretsmanager_secret.database_url.arn], aws_secretsmanager_secret.redis[*].arn)
  }

  statement {
    sid       = "DecryptTheSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = var.ecr_repository_arn == null ? [] : [1]
    content {
      sid       = "PullTheImageToken"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = var.ecr_repository_arn == null ? [] : [1]
    content {
      sid       = "PullTheImage"
      actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
      resources = [var.ecr_repository_arn]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# ---------------------------------------------------------------------------------------
# EventBridge Scheduler: starts the batch task and invokes the Lambda function.
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  count              = var.batch_schedule != null || local.lambda_schedule_on ? 1 : 0
  name               = "${local.prefix}-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "scheduler" {
  dynamic "statement" {
    for_each = var.batch_schedule == null ? [] : [1]
    content {
      sid       = "RunTheBatchTask"
      actions   = ["ecs:RunTask"]
      resources = [local.task_family_arn]
      condition {
        test     = "ArnEquals"
        variable = "ecs:cluster"
        values   = [aws_ecs_cluster.this.arn]
      }
    }
  }

  dynamic "statement" {
    for_each = var.batch_schedule == null ? [] : [1]
    content {
      sid       = "HandTheRolesToECS"
      actions   = ["iam:PassRole"]
      resources = [aws_iam_role.task.arn, aws_iam_role.execution.arn]
      condition {
        test     = "StringEquals"
        variable = "iam:PassedToService"
        values   = ["ecs-tasks.amazonaws.com"]
      }
    }
  }

  # The schedules are encrypted with the key (their target input).
  statement {
    sid       = "DecryptTheSchedules"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }

  dynamic "statement" {
    for_each = local.lambda_schedule_on ? [1] : []
    content {
      sid       = "InvokeTheFunction"
      actions   = ["lambda:InvokeFunction"]
      resources = [aws_lambda_function.this[0].arn]
    }
  }
}

resource "aws_iam_role_policy" "scheduler" {
  count  = length(aws_iam_role.scheduler)
  name   = "scheduler"
  role   = aws_iam_role.scheduler[0].id
  policy = data.aws_iam_policy_document.scheduler.json
}
