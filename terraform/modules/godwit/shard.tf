# The sharded initial load: a Step Functions Map runs ECS tasks at once, task I of N running
# `godwit run PIPELINE --once --shard I/N`, and waits for all of them.
# - mode "full-load": the state machine runs every shard, I = 1..N (shard 1 coordinates).
# - mode "full-load-and-cdc": the CDC job (the scheduled batch task and the CDC service, which
#   hold the pipeline's lease) runs with --shard 1/N and coordinates from its slot's snapshot,
#   then follows the slot; the state machine runs shards 2..N. Once the initial load is done,
#   --shard 1/N changes nothing and a shard started again ends at once.
# Start it once: aws stepfunctions start-execution --state-machine-arn <shard_state_machine_arn>

locals {
  shard_on = var.shard_count > 0
  # The CDC job coordinates a sharded initial load of a full-load-and-cdc pipeline.
  cdc_coordinates = local.shard_on && var.mode == "full-load-and-cdc"
  shard_args      = local.cdc_coordinates ? ["--shard", "1/${var.shard_count}"] : []
  shards = [
    for i in range(local.cdc_coordinates ? 1 : 0, var.shard_count) : { shard = "${i + 1}/${var.shard_count}" }
  ]

  shard_definition = {
    Comment = "godwit ${var.name}: sharded initial load, ${length(local.shards)} ECS tasks of ${var.shard_count} shards"
    StartAt = "Shards"
    States = {
      Shards = {
        Type = "Pass"
        Result = {
          shards = local.shards
        }
        Next = "Load"
      }
      Load = {
        Type           = "Map"
        ItemsPath      = "$.shards"
        MaxConcurrency = length(local.shards)
        ItemProcessor = {
          ProcessorConfig = { Mode = "INLINE" }
          StartAt         = "RunShard"
          States = {
            RunShard = {
              Type     = "Task"
              Resource = "arn:${local.partition}:states:::ecs:runTask.sync"
              Parameters = {
                Cluster        = aws_ecs_cluster.this.arn
                TaskDefinition = aws_ecs_task_definition.batch.arn
                LaunchType     = "FARGATE"
                NetworkConfiguration = {
                  AwsvpcConfiguration = {
                    Subnets        = var.private_subnet_ids
                    SecurityGroups = [aws_security_group.godwit.id]
                    AssignPublicIp = "DISABLED"
                  }
                }
                Overrides = {
                  ContainerOverrides = [{
                    Name        = local.container
                    "Command.$" = "States.Array('run', '${local.pipeline_url}', '--once', '--shard', $.shard, '--log-format', 'json')"
                  }]
                }
              }
              Retry = [{
                ErrorEquals     = ["States.TaskFailed"]
                IntervalSeconds = 60
                MaxAttempts     = 2
                BackoffRate     = 2
              }]
              End = true
            }
          }
        }
        End = true
      }
    }
  }
}

data "aws_iam_policy_document" "states_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "states" {
  count              = local.shard_on ? 1 : 0
  name               = "${local.prefix}-shards"
  assume_role_policy = data.aws_iam_policy_document.states_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "states" {
  statement {
    sid       = "RunTheShardTasks"
    actions   = ["ecs:RunTask"]
    resources = [local.task_family_arn]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid       = "FollowAndStopThem"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]
  }

  # runTask.sync learns that a task stopped from this EventBridge rule, which Step Functions
  # manages.
  statement {
    sid       = "TheSyncRule"
    actions   = ["events:PutTargets", "events:PutRule", "events:DescribeRule"]
    resources = ["arn:${local.partition}:events:${local.region}:${local.account_id}:rule/StepFunctionsGetEventsForECSTaskRule"]
  }

  statement {
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

resource "aws_iam_role_policy" "states" {
  count  = local.shard_on ? 1 : 0
  name   = "shards"
  role   = aws_iam_role.states[0].id
  policy = data.aws_iam_policy_document.states.json
}

resource "aws_sfn_state_machine" "shards" {
  #checkov:skip=CKV_AWS_284:X-Ray would trace two API calls per shard; each shard's ECS task logs to the log group.
  #checkov:skip=CKV_AWS_285:Execution logging needs logs:CreateLogDelivery and friends on "*"; the shards' own JSON logs and the task.failed alarm cover failures.
  count      = local.shard_on ? 1 : 0
  name       = "${local.prefix}-shards"
  role_arn   = aws_iam_role.states[0].arn
  definition = jsonencode(local.shard_definition)

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.mode != "cdc"
      error_message = "godwit run --shard splits an initial load: mode = \"cdc\" has none (use \"full-load\" or \"full-load-and-cdc\")."
    }
    precondition {
      condition     = length(var.cache_projections) == 0
      error_message = "godwit run --shard does not warm [cache] yet: set shard_count = 0 for a pipeline with cache_projections (the CDC job then loads and warms alone)."
    }
  }
}
